#!/usr/bin/env python3
"""Writes fuzz/seeds/<target>/ from the legacy vectors: real streams, their first frames,
truncations and bit flips. Deterministic; rerun after the vectors change.
Crash reproducers (crash-*) in the seed directories are kept."""
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent
VECTORS = ROOT.parent / "cyberbackup-core" / "tests" / "vectors" / "legacy"
CASES = ["session-h3client-shlomiserver", "multipacket-sliced-h3", "multipacket-perpacket-shlomi",
         "session-urihorclient-urihorserver"]


def first_request(c2s: bytes) -> bytes:
    length = int.from_bytes(c2s[19:23], "little")
    return c2s[: 23 + length]


def variants(name: str, data: bytes):
    yield name, data
    for cut in (22, 23, 23 + 100, 23 + 267, len(data) // 2):
        if cut < len(data):
            yield f"{name}-trunc{cut}", data[:cut]
    # Flip the version byte, the code, the payload length and a content byte.
    for at, mask in ((16, 0x01), (17, 0x04), (21, 0x80), (22, 0x10), (min(400, len(data) - 1), 0x01)):
        if at < len(data):
            flipped = bytearray(data)
            flipped[at] ^= mask
            yield f"{name}-flip{at}", bytes(flipped)


def main():
    out = {"decode_frame": {}, "server_session": {}}
    for case in CASES:
        c2s = (VECTORS / case / "c2s.bin").read_bytes()
        s2c = (VECTORS / case / "s2c.bin").read_bytes()
        short = case.split("-", 1)[1]
        for name, data in variants(f"c2s-{short}", c2s[:20000]):
            out["decode_frame"][name] = data
        out["decode_frame"][f"s2c-{short}"] = s2c
        out["decode_frame"][f"s2c-{short}-trunc5"] = s2c[:5]
        first = first_request(c2s)
        out["decode_frame"][f"c2s-{short}-first"] = first
        ss = out["server_session"]
        for chunk in (0, 255):
            ss[f"c2s-{short}-chunk{chunk}"] = bytes([chunk]) + c2s[:20000]
        ss[f"c2s-{short}-chunk7-first"] = bytes([7]) + first
        # Truncations with one read size, flips with another, to keep the seed set small.
        for name, data in variants(f"c2s-{short}", c2s[:20000]):
            if "trunc" in name:
                ss[f"{name}-chunk7"] = bytes([7]) + data
            elif "flip" in name:
                ss[f"{name}-chunk64"] = bytes([64]) + data
    for target, seeds in out.items():
        directory = ROOT / "seeds" / target
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.iterdir():
            if not old.name.startswith("crash-"):
                old.unlink()
        for name, data in seeds.items():
            (directory / name).write_bytes(data)
        print(f"{target}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
