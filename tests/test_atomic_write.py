"""Atomic writes (`data_pipeline.files.atomic_write`): the target is replaced whole or not at all,
no temporary is left behind, and new files get the mode and encoding a plain `open` would give."""

import os

import pytest

from data_pipeline.files import atomic_write as aw
from data_pipeline.files import cxrtrek_json as cj
from data_pipeline.schema.records import QAItem, Study


def _listing(directory):
    return sorted(p.name for p in directory.iterdir())


def test_text_replaces_the_target_whole_in_the_given_encoding(tmp_path):
    target = tmp_path / "page.html"
    target.write_bytes(b"old content that is longer than the new one")
    aw.write_text_atomically(target, "neu: \u00fc\u2192")
    assert target.read_bytes() == b"neu: \xc3\xbc\xe2\x86\x92"
    aw.write_text_atomically(target, "\u00fc", encoding="latin-1")
    assert target.read_bytes() == b"\xfc"
    assert _listing(tmp_path) == ["page.html"]


def test_bytes_are_written_as_given(tmp_path):
    target = tmp_path / "blob.bin"
    aw.write_bytes_atomically(target, bytes([0, 255, 10, 13]))
    assert target.read_bytes() == b"\x00\xff\n\r"


def test_a_failure_mid_write_keeps_the_old_content_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "studies.json"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with aw.open_atomically(target) as f:
            f.write("half of the new")
            f.flush()
            raise RuntimeError("disk on fire")
    assert target.read_text() == "old\n"
    assert _listing(tmp_path) == ["studies.json"]


def test_a_failure_mid_write_leaves_an_absent_target_absent(tmp_path):
    with pytest.raises(RuntimeError):
        with aw.open_atomically(tmp_path / "new.txt", "wb") as f:
            f.write(b"partial")
            raise RuntimeError("killed")
    assert _listing(tmp_path) == []


def test_a_failed_rename_keeps_the_old_content_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "metrics.jsonl"
    target.write_text('{"step": 1}\n')

    def failing_replace(src, dst):
        raise OSError(f"cannot rename {src} -> {dst}")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="cannot rename"):
        aw.write_text_atomically(target, "")
    assert target.read_text() == '{"step": 1}\n'
    assert _listing(tmp_path) == ["metrics.jsonl"]


def test_a_streamed_writer_that_fails_keeps_the_previous_file(tmp_path):
    """`cxrtrek_json.write_studies` streams into the atomic file: an error in the middle of the
    studies leaves the earlier file as it was."""
    target = tmp_path / "data.json"
    target.write_text("[]\n")
    study = Study(study_id="s1", pat_id="p1", items=(QAItem(1, "Quality_Assessment", "captioning", 1, "Q?", "A."),))

    def studies():
        yield study
        raise ValueError("study 2 is malformed")

    with pytest.raises(ValueError, match="study 2 is malformed"):
        cj.write_studies(target, studies())
    assert target.read_text() == "[]\n"
    assert _listing(tmp_path) == ["data.json"]
    assert cj.write_studies(target, [study]) == 1
    assert [s.study_id for s in cj.read_studies(target)] == ["s1"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_get_the_mode_a_plain_open_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        aw.write_text_atomically(tmp_path / "a.txt", "x")
        (tmp_path / "kept.txt").write_text("y")
        os.chmod(tmp_path / "kept.txt", 0o640)
        aw.write_text_atomically(tmp_path / "kept.txt", "z")  # the old mode is not carried over
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "kept.txt").stat().st_mode & 0o777 == mode


def test_bad_mode_and_missing_parent_are_errors_naming_the_path(tmp_path):
    with pytest.raises(ValueError, match=r"open_atomically\('.*x\.txt'\): mode must be one of"):
        with aw.open_atomically(tmp_path / "x.txt", "a"):
            pass
    with pytest.raises(FileNotFoundError):
        aw.write_text_atomically(tmp_path / "missing" / "x.txt", "x")
    assert _listing(tmp_path) == []


def test_directory_appears_complete_or_not_at_all(tmp_path):
    def write(tmp):
        tmp.mkdir()
        (tmp / "tokenizer.json").write_text("{}")

    aw.replace_directory_atomically(tmp_path / "tok", write)
    assert _listing(tmp_path) == ["tok"]
    assert (tmp_path / "tok" / "tokenizer.json").read_text() == "{}"

    def fail_halfway(tmp):
        write(tmp)
        raise RuntimeError("training failed")

    with pytest.raises(RuntimeError, match="training failed"):
        aw.replace_directory_atomically(tmp_path / "other", fail_halfway)
    assert _listing(tmp_path) == ["tok"]
    with pytest.raises(OSError):  # a complete directory is never replaced
        aw.replace_directory_atomically(tmp_path / "tok", write)
    assert _listing(tmp_path) == ["tok"]
    assert _listing(tmp_path / "tok") == ["tokenizer.json"]
