"""Box answers as a token-level finite-state machine: which ids may come next so an answer parses.

A detection answer (`schema.boxes`) is generated under this grammar, a strict subset of what
`parse_boxes` accepts, written exactly as the released files and the phantom write it
(`format_boxes`):

    answer := region (" "? region)*  end-of-turn
    region := <|ref|> label <|/ref|> " "? box (" "? box)*
    box    := <|box|> "(" N ", " N "), (" N ", " N ")" <|/box|>
    N      := an integer 0..100 without leading zeros, "." and one digit (0.0 .. 100.0)

The label is free text (no "<", at least one non-space character): the released sample labels
boxes with anatomy ("right apical zone"), the phantom with finding phrases ("right lower zone
consolidation", "enlarged cardiac silhouette") and VinDr with its class names, so the finding
vocabulary (`schema.findings`) does not cover what the data holds. Every number has one decimal
because every released and constructed box has one (`format_box`). The second point is not
above-left of the first: x2 >= x1 and y2 >= y1, as `parse_boxes` demands.

Built once from a tokenizer (`BoxGrammar.build`): the markup tags are single added tokens, the
other ids are walked character by character (a byte-level BPE token may hold several: "),", " 12",
".5"), giving for each (state, id) the next state or -1. Numbers need more than a state: each row
carries int32 registers (state, the current number in tenths, x1, y1), and an id is allowed only
if the number it writes can still end at or above its lower bound (x1 for x2, y1 for y2). A token
may touch at most one number.

Budget: `potential[s]` is how many tokens the answer needs at most from state `s` to its end-of-turn
along the shortest way out, counting every number still to come at its longest (five characters,
as "100.0"; single-byte tokens always exist in a byte-level BPE). An id is allowed only if the
state it leads to needs no more tokens than are left, so an answer started with at least
`min_tokens` tokens of budget always closes before the budget runs out.

The functions take an array module `xp` (numpy or jax.numpy): the JAX decoder applies them inside
its decoding loop, the Hugging Face logits processor with numpy; the same code decides both.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipeline.schema.boxes import BOX_CLOSE, BOX_OPEN, REF_CLOSE, REF_OPEN

__all__ = ["BOX_QTYPE", "REGISTERS", "BoxGrammar", "allowed_tokens", "advance", "replay", "is_box_turn",
           "box_grammar_of"]

# The qtype of turns answered with boxes (the same rule scoring uses to score an answer as boxes).
BOX_QTYPE = "detection"
# Per-row registers: (FSM state, current number in tenths, x1 in tenths, y1 in tenths); all 0 = start.
REGISTERS = 4

_PIECES = ("(", ", ", "), (", ", ", ")")  # the literal text before number c (c = 0..3), then after the last
_LONGEST_NUMBER = 5  # "100.0"
_SHAPES = ("Z", "ONE", "TEN", "H", "D1", "D2", "DOT", "DOTH", "DEC")
# maxreach(v) = v * mul + add: the largest value (tenths) a number in this shape can still end with.
_REACH = {"Z": (1, 9), "ONE": (0, 1000), "TEN": (0, 1000), "H": (0, 1000), "D1": (10, 99), "D2": (1, 9),
          "DOT": (1, 9), "DOTH": (1, 0), "DEC": (1, 0)}


def is_box_turn(qtype: str) -> bool:
    """Whether a turn of this qtype is answered with boxes (and decoded under the grammar)."""
    return qtype == BOX_QTYPE


def _states() -> list[tuple]:
    states = [("start",), ("label", False), ("label", True), ("after_ref",), ("after_ref_sp",), ("box",)]
    for c in range(4):
        states.append(("entry", c))
        states += [("num", c, shape) for shape in _SHAPES]
    for i, piece in enumerate(_PIECES):
        states += [("lit", i, j) for j in range(1, len(piece))]
    return states + [("close",), ("after_box",), ("after_box_sp",), ("end",)]


def _after_piece(i: int) -> tuple:
    return ("entry", i) if i < 4 else ("close",)


def _number_char(shape: str | None, ch: str) -> tuple[str, int, int] | None:
    """(next shape, mul, add) of one character inside a number (shape None: the number's first
    character); None when the character cannot continue it. Values in tenths."""
    if ch == ".":
        nxt = {"Z": "DOT", "ONE": "DOT", "TEN": "DOT", "D1": "DOT", "D2": "DOT", "H": "DOTH"}.get(shape)
        return None if nxt is None else (nxt, 1, 0)
    if not ("0" <= ch <= "9"):
        return None
    d = ord(ch) - ord("0")
    if shape in ("DOT", "DOTH"):
        return None if shape == "DOTH" and d else ("DEC", 1, d)
    nxt = {None: "Z" if d == 0 else "ONE" if d == 1 else "D1",
           "ONE": "TEN" if d == 0 else "D2", "D1": "D2", "TEN": "H" if d == 0 else None}.get(shape)
    return None if nxt is None else (nxt, 10, 10 * d)


def _char_step(state: tuple, ch: str) -> tuple | None:
    """The character-level automaton: the state after `ch`, or None."""
    kind = state[0]
    if kind == "label":
        return None if ch == "<" else ("label", state[1] or not ch.isspace())
    if kind == "after_ref":
        return ("after_ref_sp",) if ch == " " else None
    if kind == "after_box":
        return ("after_box_sp",) if ch == " " else None
    if kind == "box":
        return _advance_piece(0, 0, ch)
    if kind == "lit":
        return _advance_piece(state[1], state[2], ch)
    if kind in ("entry", "num"):
        shape = None if kind == "entry" else state[2]
        step = _number_char(shape, ch)
        if step is not None:
            return ("num", state[1], step[0])
        if shape == "DEC":
            return _advance_piece(state[1] + 1, 0, ch)
    return None


def _advance_piece(i: int, j: int, ch: str) -> tuple | None:
    piece = _PIECES[i]
    if piece[j] != ch:
        return None
    return ("lit", i, j + 1) if j + 1 < len(piece) else _after_piece(i)


def _symbol_step(state: tuple, symbol: str) -> tuple | None:
    """The state after a markup tag or end-of-turn ("EOT")."""
    kind = state[0]
    if symbol == REF_OPEN and kind in ("start", "after_box", "after_box_sp"):
        return ("label", False)
    if symbol == REF_CLOSE and state == ("label", True):
        return ("after_ref",)
    if symbol == BOX_OPEN and kind in ("after_ref", "after_ref_sp", "after_box", "after_box_sp"):
        return ("box",)
    if symbol == BOX_CLOSE and kind == "close":
        return ("after_box",)
    if symbol == "EOT" and kind == "after_box":
        return ("end",)
    return None


def _in_number(state: tuple) -> bool:
    return state[0] == "num"


def _potential(states: list[tuple]) -> np.ndarray:
    """int32[S]: tokens needed at most to reach the end (module docstring), by value iteration over
    single characters and tags: the fewest outside numbers, the most over a number's characters."""
    index = {s: k for k, s in enumerate(states)}
    chars = "0123456789., ()a<"
    symbols = (REF_OPEN, REF_CLOSE, BOX_OPEN, BOX_CLOSE, "EOT")
    big = 10 ** 6
    p = np.full(len(states), big, np.int64)
    p[index[("end",)]] = 0
    for _ in range(len(states) + 2):
        for k, state in enumerate(states):
            if state == ("end",):
                continue
            number_moves = [index[n] for ch in "0123456789." if state[0] in ("entry", "num")
                            and (n := _char_step(state, ch)) is not None and _in_number(n)]
            if number_moves:  # any legal digit may be the one the bound leaves: count the longest
                p[k] = 1 + max(p[n] for n in number_moves)
                continue
            moves = [_char_step(state, ch) for ch in chars] + [_symbol_step(state, s) for s in symbols]
            options = [p[index[n]] for n in moves if n is not None]
            p[k] = min(big, 1 + min(options)) if options else big
    return p.astype(np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class BoxGrammar:
    """The token-level automaton of box answers for one tokenizer (S states, V ids).

    next_state int32[S, V]: the state after an id, -1 when the id is not allowed there.
    coordinate int8[S, V]: the number (0..3 = x1, y1, x2, y2) the id writes, -1 when none.
    completes bool[S, V]: the id ends that number.
    value_mul, value_add int32[S, V]: the number's value (tenths) after the id is
        value * mul + add (mul 0 when the id starts the number).
    reach_mul, reach_add int32[S]: the largest value a number in the state can still end with.
    potential int32[S]: tokens needed at most to the end of the answer (module docstring).
    state_names: a readable name of each state (state 0 is the start).
    """

    next_state: np.ndarray
    coordinate: np.ndarray
    completes: np.ndarray
    value_mul: np.ndarray
    value_add: np.ndarray
    reach_mul: np.ndarray
    reach_add: np.ndarray
    potential: np.ndarray
    end_of_turn_id: int
    state_names: tuple[str, ...]

    @property
    def vocab_size(self) -> int:
        return self.next_state.shape[1]

    @property
    def min_tokens(self) -> int:
        """The smallest answer budget (end-of-turn included) under which every answer parses."""
        return int(self.potential[0])

    @classmethod
    def build(cls, tokenizer, vocab_size: int | None = None) -> "BoxGrammar":
        """The automaton of `tokenizer` (a `CXRTrekTokenizer`) over `vocab_size` ids (the model's
        logits width; ids past the tokenizer's are never allowed). ValueError when a markup tag
        is not a single token."""
        backend = tokenizer.backend
        vocab = tokenizer.vocab_size if vocab_size is None else vocab_size
        if vocab < tokenizer.vocab_size:
            raise ValueError(f"vocab_size {vocab} is smaller than the tokenizer's {tokenizer.vocab_size} ids")
        symbols = {}
        for tag in (REF_OPEN, REF_CLOSE, BOX_OPEN, BOX_CLOSE):
            ids = tokenizer.encode_text(tag)
            if len(ids) != 1:
                raise ValueError(f"box grammar: the tag {tag!r} is {len(ids)} tokens {ids}, not one added token")
            symbols[ids[0]] = tag
        symbols[tokenizer.end_of_turn_id] = "EOT"
        states = _states()
        index = {s: k for k, s in enumerate(states)}
        shape = (len(states), vocab)
        next_state = np.full(shape, -1, np.int32)
        coordinate = np.full(shape, -1, np.int8)
        completes = np.zeros(shape, bool)
        value_mul = np.ones(shape, np.int32)
        value_add = np.zeros(shape, np.int32)
        texts = {i: backend.decode([i], skip_special_tokens=True) for i in range(tokenizer.vocab_size)
                 if i not in symbols}
        for k, state in enumerate(states):
            for token, symbol in symbols.items():
                nxt = _symbol_step(state, symbol)
                if nxt is not None:
                    next_state[k, token] = index[nxt]
            for token, text in texts.items():
                walked = _walk(state, text)
                if walked is not None:
                    nxt, coord, done, mul, add = walked
                    next_state[k, token], coordinate[k, token], completes[k, token] = index[nxt], coord, done
                    value_mul[k, token], value_add[k, token] = mul, add
        reach = np.array([_REACH[s[2]] if _in_number(s) else (1, 0) for s in states], np.int32)
        names = tuple(":".join(str(x) for x in s) for s in states)
        return cls(next_state, coordinate, completes, value_mul, value_add, reach[:, 0].copy(), reach[:, 1].copy(),
                   _potential(states), tokenizer.end_of_turn_id, names)


def box_grammar_of(tokenizer, vocab_size: int) -> BoxGrammar | None:
    """The grammar of `tokenizer` over the model's `vocab_size` ids, or None (said on the console)
    when its box tags are not single tokens (an imported checkpoint's own tokenizer): its detection
    answers are then decoded unconstrained."""
    try:
        return BoxGrammar.build(tokenizer, vocab_size)
    except ValueError as err:
        print(f"detection answers decoded without the box grammar: {err}", flush=True)
        return None


def _walk(state: tuple, text: str) -> tuple[tuple, int, bool, int, int] | None:
    """A token's text from `state`: (next state, number touched or -1, whether it ends that number,
    mul, add of the number's value); None when not allowed or when it touches two numbers."""
    if not text:
        return None
    coord, done, mul, add = -1, False, 1, 0
    for ch in text:
        nxt = _char_step(state, ch)
        if nxt is None:
            return None
        if _in_number(nxt):
            if coord >= 0 and (done or nxt[1] != coord):
                return None
            if coord < 0:
                coord = nxt[1]
                if not _in_number(state):  # the token starts the number: its value begins at 0
                    mul, add = 0, 0
            _, cm, ca = _number_char(None if state[0] == "entry" else state[2], ch)
            mul, add = mul * cm, add * cm + ca
        elif _in_number(state):
            if coord >= 0 and coord != state[1]:
                return None
            coord, done = state[1], True
        state = nxt
    return state, coord, done, mul, add


def _tables(grammar: BoxGrammar, xp):
    return {name: xp.asarray(getattr(grammar, name)) for name in (
        "next_state", "coordinate", "completes", "value_mul", "value_add", "reach_mul", "reach_add", "potential")}


def allowed_tokens(grammar: BoxGrammar, registers, left, xp):
    """bool[B, V]: the ids each row may take next.

    registers int32[B, REGISTERS] (all 0 at the start of an answer); left int32[B]: tokens the answer
    may still take, this one and its end-of-turn included. Ids are allowed when the automaton
    accepts them, the number they write can still respect its lower bound, and the state they lead
    to can reach the end within `left - 1` tokens. A row where none is (a budget below `min_tokens`)
    falls back to the ids the automaton and the bounds accept; a row where none is either (in no
    state after a forced end-of-turn, or at the end) to every id."""
    t = _tables(grammar, xp)
    state = xp.maximum(registers[:, 0], 0)
    value, x1, y1 = registers[:, 1:2], registers[:, 2:3], registers[:, 3:4]
    nxt = t["next_state"][state]
    coord = t["coordinate"][state].astype(xp.int32)
    new_value = value * t["value_mul"][state] + t["value_add"][state]
    bound = xp.where(coord == 2, x1, xp.where(coord == 3, y1, 0))
    safe = xp.maximum(nxt, 0)
    reach = new_value * t["reach_mul"][safe] + t["reach_add"][safe]
    in_bound = (coord < 0) | xp.where(t["completes"][state], new_value >= bound, reach >= bound)
    accepted = (nxt >= 0) & in_bound & (registers[:, :1] >= 0)
    allowed = accepted & (t["potential"][safe] <= (left[:, None] - 1))
    fallback = xp.where(xp.any(accepted, axis=-1, keepdims=True), accepted, True)
    return xp.where(xp.any(allowed, axis=-1, keepdims=True), allowed, fallback)


def advance(grammar: BoxGrammar, registers, tokens, xp):
    """int32[B, REGISTERS] after each row takes `tokens` int32[B]; a token the automaton does not
    accept leaves the row in no state (-1)."""
    t = _tables(grammar, xp)
    state = xp.maximum(registers[:, 0], 0)
    nxt = t["next_state"][state, tokens]
    nxt = xp.where(registers[:, 0] < 0, -1, nxt)
    coord = t["coordinate"][state, tokens].astype(xp.int32)
    done = t["completes"][state, tokens]
    new_value = registers[:, 1] * t["value_mul"][state, tokens] + t["value_add"][state, tokens]
    value = xp.where(coord >= 0, new_value, registers[:, 1])
    x1 = xp.where(done & (coord == 0), new_value, registers[:, 2])
    y1 = xp.where(done & (coord == 1), new_value, registers[:, 3])
    return xp.stack([nxt, value, x1, y1], axis=-1).astype(xp.int32)


def replay(grammar: BoxGrammar, tokens) -> np.ndarray:
    """int32[REGISTERS] after an answer's tokens (numpy, one row), from the start."""
    registers = np.zeros((1, REGISTERS), np.int32)
    for token in tokens:
        registers = advance(grammar, registers, np.asarray([int(token)], np.int32), np)
    return registers[0]
