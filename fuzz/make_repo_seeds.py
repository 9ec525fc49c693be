#!/usr/bin/env python3
"""Writes fuzz/seeds/repo_<object>/ from the repository vectors
(cyberbackup-core/tests/vectors/repo/tiny.txt): each real object, truncations and bit flips.
Deterministic; rerun after the vectors change. Crash reproducers (crash-*) are kept."""
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent
VECTORS = ROOT.parent / "cyberbackup-core" / "tests" / "vectors" / "repo" / "tiny.txt"


def load():
    out = {}
    for line in VECTORS.read_text().splitlines():
        if line.startswith("#"):
            continue
        name, value = line.split(": ", 1)
        out[name] = bytes.fromhex(value)
    return out


def variants(name, data):
    yield name, data
    for cut in (4, 5, 9, len(data) // 2, len(data) - 1):
        if 0 < cut < len(data):
            yield f"{name}-trunc{cut}", data[:cut]
    for at in (0, 4, 5, 8, len(data) // 2, len(data) - 1):
        if 0 <= at < len(data):
            flipped = bytearray(data)
            flipped[at] ^= 0x01
            yield f"{name}-flip{at}", bytes(flipped)


def main():
    v = load()
    sources = {
        "repo_pack_header": ["pack"],
        "repo_tree": ["tree_root_plain", "tree_docs_plain"],
        "repo_snapshot": ["snapshot"],
        "repo_key_object": ["key_device", "key_passphrase"],
        "repo_config": ["config"],
        "repo_ref_chunk": ["ref_chunk0"],
    }
    seeds = {target: {} for target in sources}
    seeds["repo_sealed_blob"] = {}
    for target, names in sources.items():
        for name in names:
            seeds[target].update(variants(name, v[name]))
    for name in ("data_bin_chunk0", "hello_txt_chunk0", "tree_root"):
        blob = v[f"{name}_id"] + v[f"{name}_sealed"]
        seeds["repo_sealed_blob"].update(variants(name, blob))
    for target, items in seeds.items():
        directory = ROOT / "seeds" / target
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.iterdir():
            if not old.name.startswith("crash-"):
                old.unlink()
        for name, data in items.items():
            (directory / name).write_bytes(data)


if __name__ == "__main__":
    main()
