#!/usr/bin/env python3
"""Runs every verifier, and keyrelay's own `keys verify`, on every vector in
fixtures/verify/vectors.json, against the JWK Set and against the one public key, with the
revocation list; exits 1 if any answer differs from the vector's.

    python3 verifiers/check_vectors.py [--only python,node,...] [--keyrelay PATH] [--mutants N]

With --mutants N it also makes N keys by changing the vectors' keys at random (characters
changed, added, dropped, cut short; a fixed seed, so every run makes the same ones) and checks
that every verifier answers each as keyrelay does.

Each verifier is built first (Go, Rust, Java and C; the Node one is checked in compiled).
Run it with the Python that has `cryptography` (a venv, as .ci/run makes).
Standard library only."""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VECTORS = os.path.join(ROOT, "fixtures", "verify", "vectors.json")


def build(name, out):
    """The command that runs verifier `name`, after building it into `out`."""
    def run(*cmd, cwd=HERE, env=None):
        subprocess.run(cmd, cwd=cwd, check=True, env={**os.environ, **(env or {})})

    if name == "python":
        return [sys.executable, os.path.join(HERE, "python", "keyrelay_verify.py")]
    if name == "node":
        return ["node", os.path.join(HERE, "node", "dist", "cli.js")]
    if name == "go":
        binary = os.path.join(out, "go-verify")
        run("go", "build", "-o", binary, "./cmd/keyrelay-verify", cwd=os.path.join(HERE, "go"),
            env={"GOFLAGS": "-mod=mod", "GOCACHE": os.path.join(out, "gocache")})
        return [binary]
    if name == "rust":
        target = os.path.join(ROOT, "target", "verifiers")
        run("cargo", "build", "--quiet", "--locked", "--manifest-path",
            os.path.join(HERE, "rust", "Cargo.toml"), env={"CARGO_TARGET_DIR": target})
        return [os.path.join(target, "debug", "keyrelay-verify")]
    if name == "java":
        classes = os.path.join(out, "java")
        sources = [os.path.join(HERE, "java", f) for f in ("KeyrelayVerify.java", "Main.java")]
        run("javac", "-d", classes, *sources)
        return ["java", "-cp", classes, "Main"]
    if name == "c":
        binary = os.path.join(out, "c-verify")
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libsodium"],
                               capture_output=True, text=True, check=True).stdout.split()
        run("cc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-o", binary,
            os.path.join(HERE, "c", "main.c"), os.path.join(HERE, "c", "keyrelay_verify.c"), *flags)
        return [binary]
    raise SystemExit(f"no verifier named {name}")


def answers_of(command, trust, revocations, keys):
    """Runs a verifier on every key at once: one JSON answer per line of stdin."""
    done = subprocess.run(command + trust + ["--revocations", revocations],
                          input="".join(k + "\n" for k in keys).encode(), capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr.decode()[-2000:]}")
    return [json.loads(line) for line in done.stdout.decode().splitlines()]


def keyrelay_answers(binary, trust, revocations, keys):
    """`keyrelay keys verify`, once per key: the payload on stdout, or `[reason]` on stderr."""
    answers = []
    for key in keys:
        done = subprocess.run([binary, "keys", "verify", *trust, "--revocations", revocations,
                               "--", key], capture_output=True)
        if done.returncode == 0:
            answers.append(dict(valid=True, **json.loads(done.stdout)))
        else:
            err = done.stderr.decode()
            reason = err.split("[", 1)[1].split("]", 1)[0] if "invalid key [" in err else err
            answers.append({"valid": False, "reason": reason})
    return answers


ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def mutants(keys, count):
    """`count` keys near the given ones: each changed one to three times at random."""
    rng = random.Random(7)
    made = []
    valid = [k for k in keys if len(k) > 20]
    while len(made) < count:
        key = list(rng.choice(valid))
        for _ in range(rng.randint(1, 3)):
            if not key:
                break
            at = rng.randrange(len(key))
            kind = rng.randrange(5)
            if kind == 0:
                key[at] = rng.choice(ALPHABET)
            elif kind == 1:
                key.insert(at, rng.choice(ALPHABET + "=+/ ."))
            elif kind == 2 and len(key) > 1:
                del key[at]
            elif kind == 3:
                key = key[:at]
            else:
                key[0] = rng.choice("ABC")  # version byte 0, 1 or 2
        made.append("".join(key))
    return made


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="rust,python,node,go,java,c,keyrelay")
    parser.add_argument("--keyrelay", default=os.path.join(ROOT, "target", "debug", "keyrelay"))
    parser.add_argument("--mutants", type=int, default=0)
    args = parser.parse_args()
    with open(VECTORS, encoding="utf-8") as f:
        vectors = json.load(f)
    keys = [v["key"] for v in vectors["vectors"]]
    out = tempfile.mkdtemp(prefix="keyrelay-verifiers-")
    jwks, revocations = os.path.join(out, "jwks.json"), os.path.join(out, "revoked.json")
    with open(jwks, "w") as f:
        json.dump(vectors["jwks"], f)
    with open(revocations, "w") as f:
        json.dump(vectors["revocations"], f)
    modes = [("with_jwks", ["--jwks", jwks]),
             ("with_public_key", ["--public-key", vectors["public_key"]])]
    if args.mutants:
        extra = mutants(keys, args.mutants)
        answers = {mode: keyrelay_answers(args.keyrelay, trust, revocations, extra)
                   for mode, trust in modes}
        vectors["vectors"] += [
            {"name": f"mutant {n}: {key!r}", "key": key,
             "with_jwks": answers["with_jwks"][n], "with_public_key": answers["with_public_key"][n]}
            for n, key in enumerate(extra)]
        keys += extra
    failed = False
    try:
        for name in args.only.split(","):
            disagreements = []
            try:
                if name == "keyrelay":
                    run = lambda trust: keyrelay_answers(args.keyrelay, trust, revocations, keys)
                else:
                    command = build(name, out)
                    run = lambda trust: answers_of(command, trust, revocations, keys)
                for mode, trust in modes:
                    got = run(trust)
                    if len(got) != len(keys):
                        disagreements.append(f"{mode}: {len(got)} answers for {len(keys)} keys")
                    for vector, answer in zip(vectors["vectors"], got):
                        if answer != vector[mode]:
                            disagreements.append(
                                f"{mode}: {vector['name']}: got {answer}, expected {vector[mode]}")
            except (OSError, RuntimeError, subprocess.CalledProcessError, ValueError) as e:
                disagreements.append(f"could not run: {e}")
            failed |= bool(disagreements)
            total = 2 * len(keys)
            status = "ok" if not disagreements else "FAILED"
            print(f"{name:9} {status:7} {total - min(len(disagreements), total)}/{total} answers agree")
            for line in disagreements:
                print(f"          {line}")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
