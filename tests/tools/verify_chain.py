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

Evidence mode (docs/hash-chain.md, "The evidence log"), with the log's public
key alone:

    verify_chain.py --public-key KEY --checkpoint FILE [--proof FILE]

checks the checkpoint's Ed25519 signature (C2SP signed note; Ed25519 written
here from RFC 8032) and, given `mandate proof TASK --json` output, every
inclusion proof in it against the checkpoint's root (RFC 9162 section
2.1.3.2). KEY is NAME+HASH+BASE64 or a file holding it. Exit 0 all verify,
1 a signature or proof fails, 2 bad input.
"""

import base64
import hashlib
import json
import os
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


# --- Ed25519 verification (RFC 8032 section 5.1), written from the math ---

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def _add(a, b):
    """Adds points in extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, xy = T/Z."""
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % P
    bb = (y1 + x1) * (y2 + x2) % P
    cc = 2 * D * t1 * t2 % P
    dd = 2 * z1 * z2 % P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(k, point):
    result = (0, 1, 1, 0)  # the neutral element
    while k:
        if k & 1:
            result = _add(result, point)
        point = _add(point, point)
        k >>= 1
    return result


def _decode_point(b):
    """The point a 32-byte encoding names, or None."""
    if len(b) != 32:
        return None
    y = int.from_bytes(b, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if v * x * x % P == (-u) % P:
        x = x * SQRT_M1 % P
    elif v * x * x % P != u:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


BASE = _decode_point((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))


def _same(a, b):
    return (a[0] * b[2] - b[0] * a[2]) % P == 0 and (a[1] * b[2] - b[1] * a[2]) % P == 0


def ed25519_verify(public, message, signature):
    """True if `signature` (64 bytes) is `public`'s (32 bytes) over `message`."""
    if len(signature) != 64:
        return False
    a, r = _decode_point(public), _decode_point(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if a is None or r is None or s >= L:
        return False
    k = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % L
    return _same(_mul(s, BASE), _add(r, _mul(k, a)))


# --- Signed notes, checkpoints and inclusion proofs ---


class Refused(Exception):
    """A signature or proof that does not verify."""


def parse_public_key(text):
    """(name, key hash, 32-byte key) of NAME+HASH+BASE64 (C2SP signed-note verifier key)."""
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as f:
            text = f.read()
    try:
        name, key_hash, b64 = text.strip().split("+", 2)
        raw = base64.b64decode(b64, validate=True)
    except ValueError:
        raise SystemExit("--public-key is not NAME+HASH+BASE64") from None
    if len(raw) != 33 or raw[0] != 1:
        raise SystemExit("--public-key is not an Ed25519 key")
    digest = hashlib.sha256(name.encode() + b"\n" + raw).digest()
    if digest[:4].hex() != key_hash:
        raise SystemExit("--public-key: its hash does not match its name and key")
    return name, bytes.fromhex(key_hash), raw[1:]


def open_checkpoint(note, key):
    """(origin, size, root) of a signed checkpoint, its signature by `key` checked."""
    name, key_hash, public = key
    text, sep, sigs = note.partition("\n\n")
    if not sep:
        raise SystemExit("the checkpoint is not a signed note (no blank line)")
    text += "\n"
    signed_by = []
    for line in sigs.splitlines():
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != "\u2014":
            raise SystemExit(f"bad signature line {line!r}")
        raw = base64.b64decode(parts[2])
        signed_by.append(f"{parts[1]}+{raw[:4].hex()}")
        if parts[1] == name and raw[:4] == key_hash:
            if not ed25519_verify(public, text.encode("utf-8"), raw[4:]):
                raise Refused(f"the signature of {name} does not verify: the checkpoint was altered")
            lines = text.splitlines()
            if len(lines) < 3 or lines[0] != name:
                raise SystemExit("the checkpoint's origin is not the key's name")
            return lines[0], int(lines[1]), base64.b64decode(lines[2])
    raise Refused(f"the checkpoint is not signed by {name}+{key_hash.hex()} (signed by {', '.join(signed_by)})")


def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_inclusion(leaf, index, size, path):
    """The root an RFC 9162 inclusion proof leads to, or None if malformed."""
    if index >= size:
        return None
    fn, sn, r = index, size - 1, hashlib.sha256(b"\x00" + leaf).digest()
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def verify_evidence(argv):
    """Evidence mode; returns an exit code."""
    args = dict(zip(argv[1::2], argv[2::2]))
    unknown = set(args) - {"--public-key", "--checkpoint", "--proof"}
    if len(argv) % 2 == 0 or unknown or "--checkpoint" not in args:
        raise SystemExit("usage: verify_chain.py --public-key KEY --checkpoint FILE [--proof FILE]")
    key = parse_public_key(args["--public-key"])
    with open(args["--checkpoint"], encoding="utf-8") as f:
        note = f.read()
    try:
        origin, size, root = open_checkpoint(note, key)
        print(f"checkpoint {origin} size {size} root {root.hex()}: signature ok")
        if "--proof" not in args:
            return 0
        with open(args["--proof"], encoding="utf-8") as f:
            doc = json.load(f)
        if doc.get("tree_size") != size or doc.get("root") != root.hex():
            raise Refused("the proof is not against this checkpoint (tree size or root differ)")
        bad = 0
        for e in doc["events"]:
            where = f"task {doc['task_id']} seq {e['seq']} gseq {e['gseq']}"
            if e["leaf_index"] >= size:
                print(f"not covered {where}: the checkpoint predates it")
                continue
            path = [bytes.fromhex(h) for h in e["proof"]]
            got = root_from_inclusion(bytes.fromhex(e["event_hash"]), e["leaf_index"], size, path)
            if got == root:
                print(f"ok {where}: included at leaf {e['leaf_index']}")
            else:
                print(f"BROKEN {where}: its inclusion proof does not lead to the checkpoint's root")
                bad += 1
        return 1 if bad else 0
    except Refused as r:
        print(f"REFUSED: {r}")
        return 1
    except (KeyError, TypeError, ValueError) as e:
        raise SystemExit(f"the proof file is not `mandate proof --json` output: {e}") from None


def main(argv):
    if len(argv) > 1 and argv[1].startswith("--") and argv[1] not in ("--help",):
        try:
            return verify_evidence(argv)
        except SystemExit as e:
            print(f"error: {e.code}", file=sys.stderr)
            return 2
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
