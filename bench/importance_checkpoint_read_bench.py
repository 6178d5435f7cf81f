"""Reading a checkpoint tensor by tensor: owned reads (`CheckpointReader`) against safetensors' maps.

A ~1 GiB checkpoint of random bfloat16 tensors (32 x [4096, 4096], 4 shards) is read "layer by
layer" (4 tensors held at a time, then dropped), each method in a fresh subprocess, page cache warm
(every shard read once before), best of `--repeat` runs. Every page is touched after the read (one
byte in 4096: a mapped tensor is only paged in from the page cache when used, as by a layer's forward):

- "owned":  `CheckpointReader.read` (plain file reads into a buffer the tensor owns; no map);
- "mapped": safetensors' `safe_open(...).get_slice(name)[:]` per tensor, what the reader did before:
  the tensor is backed by a map of its whole shard, alive as long as the tensor;
- "mapped+clone": the same followed by `.clone()` (an owned copy, the map released at once);
- "memcpy": no file, `.clone()` of a tensor in memory of the same size: the machine's copy speed.

Per method: seconds and GB/s for the whole checkpoint, the largest size mapped from the shards at
any point (/proc/self/maps) and after the last drop, and the peak RSS above the RSS before reading
(VmHWM, reset through /proc/self/clear_refs; file pages of a private map count as resident).

    python bench/importance_checkpoint_read_bench.py [--workdir DIR] [--repeat 3]
    python bench/importance_checkpoint_read_bench.py --sweeps MODEL_DIR   # RSS over repeated layer loads

`--sweeps`: a model checkpoint's decoder layers loaded and released 5 times over with `ModuleLoader`
(as the passes of a streamed importance pass do), RSS after each sweep. On the cpu-small model of
importance_streamed_bench.py (0.64 GB, 8 layers), MiB: safetensors maps (before) 389 389 389 389 389;
owned reads from torch.empty (glibc heap) 665 929 1193 1457 1721, a layer's size kept per load;
owned reads in anonymous maps of their own (now) 389 389 389 389 389.

Measured 2026-11-30 on the shared 2-core CPU machine (load varies: compare lines of one run), best of 3:
            owned: 0.681 s (1.58 GB/s), mapped max    0 MiB / after 0, peak RSS +133 MiB
           mapped: 0.124 s (8.68 GB/s), mapped max 1024 MiB / after 0, peak RSS +133 MiB
     mapped+clone: 0.710 s (1.51 GB/s), mapped max    0 MiB / after 0, peak RSS +165 MiB
           memcpy: 0.643 s (1.67 GB/s), mapped max    0 MiB / after 0, peak RSS +132 MiB
An owned read costs one copy of the data, about a memcpy (0.68 s vs 0.64 s per GiB from the page
cache; 0.56 s per GiB more than a map, which only faults the pages in), and needs no clone afterwards;
a map holds a whole-shard map per tensor (4 held tensors of one 256 MiB shard: 1 GiB of address
space). Resident memory while held is the same (the tensors' bytes: file pages of a map count too).
In a streamed pass the copy is once per weight byte, next to a layer's forward over every calibration
batch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARDS, PER_SHARD, ROWS, COLS, GROUP = 4, 8, 4096, 4096, 4


def write_checkpoint(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    generator = torch.Generator().manual_seed(0)
    for s in range(SHARDS):
        file = f"model-{s + 1:05d}-of-{SHARDS:05d}.safetensors"
        names = [f"layers.{s * PER_SHARD + t}.weight" for t in range(PER_SHARD)]
        save_file(
            {n: torch.randn(ROWS, COLS, generator=generator).to(torch.bfloat16) for n in names}, path / file
        )
        weight_map.update(dict.fromkeys(names, file))
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _mapped(files: set[str]) -> int:
    total = 0
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] in files:
            a, b = (int(x, 16) for x in fields[0].split("-"))
            total += b - a
    return total


def child(path: Path, method: str) -> dict:
    import torch
    from safetensors import safe_open

    from worker.engine.checkpoint_reader import CheckpointReader

    reader = CheckpointReader(path)
    files = {str((path / f).resolve()) for f in set(reader.weight_map.values())}

    def read(name):
        if method == "memcpy":
            return source.clone()
        if method == "owned":
            return reader.read(name)
        with safe_open(str(path / reader.weight_map[name]), "pt") as f:
            tensor = f.get_slice(name)[:]
        return tensor.clone() if method == "mapped+clone" else tensor

    names = reader.names()
    if method == "memcpy":  # the machine's copy speed: clone an owned tensor of each size
        source = torch.empty(ROWS, COLS, dtype=torch.bfloat16).fill_(1)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    rss0 = _status("VmRSS")
    max_mapped = 0
    start = time.perf_counter()
    checksum = 0.0
    for g in range(0, len(names), GROUP):
        held = [read(n) for n in names[g : g + GROUP]]
        max_mapped = max(max_mapped, _mapped(files))
        for t in held:  # touch every page, as a layer's forward does (a map is read lazily)
            checksum += int(t.reshape(-1).view(torch.uint8)[:: 1 << 12].sum(dtype=torch.int64))
        del t
        del held
    seconds = time.perf_counter() - start
    return {
        "method": method,
        "seconds": seconds,
        "gb_per_s": reader.total_bytes() / seconds / 1e9,
        "max_mapped_bytes": max_mapped,
        "mapped_after_bytes": _mapped(files),
        "peak_rss_above_start_bytes": _status("VmHWM") - rss0,
        "checksum": checksum,
    }


def sweeps(path: Path, count: int = 5) -> None:
    import gc

    from worker.engine.checkpoint_reader import CheckpointReader
    from worker.engine.layer_loader import ModuleLoader, empty_model

    reader = CheckpointReader(path)
    model = empty_model(path, reader)
    loader = ModuleLoader(model, reader, "cpu")
    rss = []
    for _ in range(count):
        for layer in model.model.layers:
            loader.load(layer)
            for p in layer.parameters():  # touch every page
                p.reshape(-1)[:: 1 << 10].sum()
            loader.release(layer)
        gc.collect()
        rss.append(_status("VmRSS") >> 20)
    print(f"RSS after each of {count} sweeps over {len(model.model.layers)} layers, MiB: {rss}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--sweeps", type=Path, help="a model checkpoint: RSS over repeated layer loads")
    args = parser.parse_args()
    if args.sweeps:
        sweeps(args.sweeps)
        return
    if args.child:
        print(json.dumps(child(Path(args.child[0]), args.child[1])))
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="prunescope-read-bench-"))
    path = work / "ckpt"
    if not (path / "model.safetensors.index.json").is_file():
        write_checkpoint(path)
    for file in path.glob("*.safetensors"):  # warm the page cache: every method reads from memory
        with open(file, "rb") as f:
            while f.read(1 << 26):
                pass
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    print(
        f"checkpoint: {size / 2**30:.2f} GiB in {SHARDS} shards, {SHARDS * PER_SHARD} tensors, {GROUP} held at a time"
    )
    results = {}
    for _ in range(args.repeat):
        for method in ("owned", "mapped", "mapped+clone", "memcpy"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(path), method],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            if method not in results or r["seconds"] < results[method]["seconds"]:
                results[method] = r
    assert len({r["checksum"] for m, r in results.items() if m != "memcpy"}) == 1, (
        "the methods read different data"
    )
    for r in results.values():
        print(
            f"{r['method']:>13}: {r['seconds']:.3f} s ({r['gb_per_s']:.2f} GB/s), mapped max "
            f"{r['max_mapped_bytes'] / 2**20:.0f} MiB / after {r['mapped_after_bytes'] / 2**20:.0f} MiB, "
            f"peak RSS +{r['peak_rss_above_start_bytes'] / 2**20:.0f} MiB"
        )


if __name__ == "__main__":
    main()
