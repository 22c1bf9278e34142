import dataclasses
import json

import pytest

from cxrtrek_jax.config_tree import from_dict, override, to_dict


@dataclasses.dataclass(frozen=True)
class Inner:
    rank: int = 4
    names: tuple[str, ...] = ("q", "v")


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str = "x"
    lr: float = 1e-3
    flag: bool = False
    inner: Inner = Inner()
    maybe: Inner | None = None
    stages: tuple[int, ...] | None = None


def test_json_round_trip():
    cfg = Outer(inner=Inner(8, ("a",)), maybe=Inner(), stages=(1, 8))
    assert from_dict(json.loads(json.dumps(to_dict(cfg))), Outer) == cfg


def test_dotted_overrides_parse_command_line_strings():
    cfg = override(Outer(), {"lr": "0.5", "flag": "true", "inner.rank": "16", "inner.names": "k,o",
                             "stages": "2,3"})
    assert cfg == Outer(lr=0.5, flag=True, inner=Inner(16, ("k", "o")), stages=(2, 3))
    assert override(cfg, {"stages": "none"}).stages is None
    assert override(Outer(), {"maybe": '{"rank": 2}'}).maybe == Inner(2)
    # "none" is None only for optional fields; a str field keeps the text.
    assert override(Outer(), {"name": "none", "inner.names": "none,own"}).inner.names == ("none", "own")


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("nope", 1, "has no field 'nope'"),
        ("inner.nope", 1, "has no field 'nope'"),
        ("lr", "fast", "needs a float"),
        ("flag", "maybe", "needs a boolean"),
        ("inner.rank", "2.5", "needs a int"),
        ("name", None, "cannot be None"),
        ("maybe.rank", 3, "not a nested config"),
    ],
)
def test_bad_overrides_name_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        override(Outer(), {key: value})


def test_unknown_keys_in_dict_are_errors():
    with pytest.raises(ValueError, match="unknown config keys"):
        from_dict({"name": "a", "extra": 1}, Outer)
