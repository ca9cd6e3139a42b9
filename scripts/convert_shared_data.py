#!/usr/bin/env python
"""Convert the staged real graphs (../shared/data) into the package's built-in datasets.

Usage: python scripts/convert_shared_data.py [SHARED_DATA_DIR]

Writes pipeline/builtin_data/NAME/{nodes.parquet, edges.parquet, meta.json, splits/*.json}.
Node ids are the source's 0..N-1 ids; labels are stored by name; splits keep their names.
Provenance, licence notes and source hashes are copied into meta.json.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
OUT_ROOT = REPO / "pipeline" / "builtin_data"
KEEP_SPLITS = ("planetoid_public", "random_60_20_20_seed", "per_class20_val500_test1000_seed")


def convert(src: Path, out: Path) -> None:
    meta = json.loads((src / "meta.json").read_text())
    rows = [json.loads(line) for line in (src / "nodes.jsonl").read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: r["node_id"])
    assert [r["node_id"] for r in rows] == list(range(len(rows))), "node ids must be 0..N-1"
    nodes = pa.table(
        {
            "node_id": pa.array([r["node_id"] for r in rows], pa.int64()),
            "text": pa.array([r["text"] for r in rows], pa.string()),
            "label": pa.array([r["label_name"] for r in rows], pa.string()),
        }
    )
    src_ids, dst_ids = [], []
    lines = (src / "edges.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["src", "dst"], lines[0]
    for line in lines[1:]:
        a, b = line.split("\t")
        src_ids.append(int(a))
        dst_ids.append(int(b))
    edges = pa.table({"src": pa.array(src_ids, pa.int64()), "dst": pa.array(dst_ids, pa.int64())})

    if out.exists():
        shutil.rmtree(out)
    (out / "splits").mkdir(parents=True)
    pq.write_table(nodes, out / "nodes.parquet", compression="zstd")
    pq.write_table(edges, out / "edges.parquet", compression="zstd")
    for split_file in sorted((src / "splits").glob("*.json")):
        if split_file.stem.startswith(KEEP_SPLITS):
            shutil.copyfile(split_file, out / "splits" / split_file.name)
    # label_names order = the source's integer labels, so class indices match the literature.
    by_index = {r["label"]: r["label_name"] for r in rows}
    assert [by_index[i] for i in range(len(by_index))] == meta["label_names"]
    meta["converted_by"] = "scripts/convert_shared_data.py"
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{out.name}: {nodes.num_rows} nodes, {edges.num_rows} edges, {len(meta['label_names'])} classes")


def main() -> None:
    shared = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "data"
    for name in ("cora", "citeseer"):
        convert(shared / name, OUT_ROOT / name)


if __name__ == "__main__":
    main()
