#!/usr/bin/env python3
"""Verify the hash chain of a Mandate history export, independently of Mandate.

Usage:
    mandate history TASK_ID --json > export.jsonl
    python3 verify_chain.py < export.jsonl        # or: verify_chain.py export.jsonl

Python 3 standard library only; shares no code with the engine. The algorithm
is the one documented in docs/hash-chain.md:

    canonical(e) = RFC 8785 canonical JSON of
                   {"actor", "payload", "recorded_at_ms", "seq", "task_id", "type"}
    hash(e)      = SHA-256(bytes(prev_hash) || canonical(e)), lowercase hex
    prev_hash of seq 1 = 64 zeros (32 zero bytes)

Exit codes: 0 every chain verifies; 1 a chain is broken (the first bad seq is
named); 2 the input is not a Mandate export; 3 a payload holds a number this
verifier cannot canonicalize exactly as RFC 8785 requires (a non-integral
float, or an integer beyond 2**53): it refuses rather than guess.
"""

import hashlib
import json
import sys

GENESIS = "0" * 64
MAX_SAFE_INTEGER = 2**53


class Unsupported(Exception):
    """A value this verifier cannot canonicalize identically to RFC 8785."""


def canonical(value):
    """RFC 8785 (JCS) canonical JSON text of a parsed JSON value.

    Handles null, booleans, strings, integers within +-2**53, integral floats
    in that range (ES6 prints 2.0 as 2), arrays and objects. Object keys are
    sorted by their UTF-16 code units, as RFC 8785 requires (not by code
    points, which differs for characters beyond the BMP).
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise Unsupported(f"integer {value} is beyond 2**53; RFC 8785 formats it as a double")
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise Unsupported(f"{value} is not a JSON number")
        if value.is_integer() and abs(value) <= MAX_SAFE_INTEGER:
            return str(int(value))
        raise Unsupported(
            f"the float {value!r} needs ECMAScript number formatting, which this verifier does not implement"
        )
    if isinstance(value, str):
        # ensure_ascii=False: non-ASCII as UTF-8; escapes exactly ", \, and
        # control characters (\b \f \n \r \t short, the rest as \u00xx), as RFC 8785.
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Unsupported("a string holds a lone surrogate, which is not valid UTF-8")
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    if isinstance(value, dict):
        keys = sorted(value.keys(), key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(canonical(k) + ":" + canonical(value[k]) for k in keys) + "}"
    raise Unsupported(f"unexpected value of type {type(value).__name__}")


def event_hash(prev_hash, line):
    doc = {
        "actor": line["actor"],
        "payload": line["payload"],
        "recorded_at_ms": line["recorded_at_ms"],
        "seq": line["seq"],
        "task_id": line["task_id"],
        "type": line["type"],
    }
    try:
        prev = bytes.fromhex(prev_hash)
        if len(prev) != 32:
            raise ValueError
    except ValueError:
        # The engine hashes a malformed stored prev_hash as its UTF-8 text.
        prev = prev_hash.encode("utf-8")
    return hashlib.sha256(prev + canonical(doc).encode("utf-8")).hexdigest()


REQUIRED = ("task_id", "seq", "type", "actor", "recorded_at_ms", "payload", "prev_hash", "hash")


def read_lines(stream):
    """(line number, parsed object) for each non-empty line."""
    for number, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise SystemExit(f"line {number}: not JSON: {e}") from None
        missing = [k for k in REQUIRED if k not in obj] if isinstance(obj, dict) else list(REQUIRED)
        if missing:
            raise SystemExit(f"line {number}: not a Mandate event (missing {', '.join(missing)})")
        yield number, obj


def verify(stream):
    """Returns (exit code, messages)."""
    chains = {}  # task_id -> [expected seq, expected prev_hash, count]
    messages = []
    for number, e in read_lines(stream):
        task = e["task_id"]
        expected_seq, expected_prev, count = chains.setdefault(task, [1, GENESIS, 0])
        if expected_seq is None:
            continue  # this task's chain already broke; its first bad seq was named
        seq = e["seq"]
        where = f"task {task} seq {seq} (line {number}, {e['type']})"
        problem = None
        if seq != expected_seq:
            where = f"task {task} seq {expected_seq}"
            problem = (
                f"missing: the next event in the export is seq {seq} (line {number}, {e['type']}); "
                "an event was deleted, duplicated or moved"
            )
        elif e["prev_hash"] != expected_prev:
            problem = f"prev_hash {e['prev_hash'][:12]}… does not link to the previous hash {expected_prev[:12]}…"
        else:
            try:
                computed = event_hash(e["prev_hash"], e)
            except Unsupported as u:
                messages.append(f"UNSUPPORTED {where}: {u}")
                return 3, messages
            if computed != e["hash"]:
                problem = f"content does not match its hash (stored {e['hash'][:12]}…, computed {computed[:12]}…): the event was edited"
        if problem:
            messages.append(f"BROKEN {where}: {problem}")
            chains[task] = [None, None, count]
            continue
        chains[task] = [seq + 1, e["hash"], count + 1]
    if not chains:
        raise SystemExit("no events in the input")
    broken = False
    for task, (next_seq, head, count) in chains.items():
        if next_seq is None:
            broken = True
        else:
            messages.append(f"ok {task}: {count} event(s) verify from seq 1, head {head}")
    return (1 if broken else 0), messages


def main(argv):
    if len(argv) > 2 or (len(argv) == 2 and argv[1] in ("-h", "--help")):
        print(__doc__.strip())
        return 0 if len(argv) == 2 else 2
    try:
        if len(argv) == 2:
            with open(argv[1], encoding="utf-8") as f:
                code, messages = verify(f)
        else:
            code, messages = verify(sys.stdin)
    except SystemExit as e:
        print(f"error: {e.code}", file=sys.stderr)
        return 2
    for m in messages:
        print(m)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
