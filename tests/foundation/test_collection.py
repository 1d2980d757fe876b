"""The collection store: bounded, atomic, checked on reading, summarised and exported."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from ddnn.data.datasets import create_dataset
from ddnn.errors import DdnnError
from ddnn.store import collection as collection_module
from ddnn.store.collected import (
    CorruptStore,
    export_npz,
    load_collection,
    read_labels,
    summarize,
    targets,
)
from ddnn.store.collection import MANIFEST, Collector, Record


def record(i: int = 0, *, entropy: float = 0.1, local: int = -1, kind: str = "features") -> Record:
    x = (
        np.where(np.arange(8 * 7 * 7).reshape(1, 8, 7, 7) % (i + 2) == 0, 1.0, -1.0)
        if kind == "features"
        else np.full((1, 1, 6, 6), (i % 256) / 255.0)
    ).astype(np.float32)
    return Record("toy", 1, 1 if kind == "features" else 0, kind, x, None, i % 4, 1, entropy,
                  local_pred=local, frame_id=i, time=1000.0 + i)  # fmt: skip


def fill(folder, records, **limits) -> Collector:
    limits = {"max_bytes": 10**7, "max_count": 10**6, "shard_records": 8} | limits
    with Collector(folder, **limits) as collector:
        for r in records:
            collector.offer(r)
    return collector


def disk_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_the_store_keeps_what_it_was_offered_in_shards(tmp_path):
    collector = fill(tmp_path, [record(i) for i in range(20)])
    coll = load_collection(tmp_path)
    assert len(coll) == 20 and coll.shards == 3 and collector.stats["written"] == 20
    (group,) = coll.groups
    assert group.columns["x"].dtype == np.int8  # +-1 features: a byte each, exactly
    assert np.array_equal(group.columns["x"][5], record(5).x)
    assert list(group.columns["seq"]) == list(range(20))
    assert coll.bytes == disk_bytes(tmp_path)


def test_a_full_store_by_count_stops_and_says_so_once(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ddnn.store.collection"):
        collector = fill(tmp_path, [record(i) for i in range(30)], max_count=12)
    assert len(load_collection(tmp_path)) == 12
    assert collector.stats | {"dropped": 0} == {
        "written": 12, "skipped_full": 18, "dropped": 0, "write_failures": 0, "full": 1,
    }  # fmt: skip
    assert sum("is full" in r.getMessage() for r in caplog.records) == 1


def test_a_full_store_by_size_never_grows_past_its_bound(tmp_path):
    limit = 40_000
    collector = fill(tmp_path, [record(i, kind="raw") for i in range(400)], max_bytes=limit)
    assert collector.full and collector.stats["skipped_full"] > 0
    assert 0 < disk_bytes(tmp_path) <= limit
    assert len(load_collection(tmp_path)) == collector.stats["written"]


def test_a_reopened_store_continues_its_numbering_and_its_bound(tmp_path):
    fill(tmp_path, [record(i) for i in range(5)])
    again = fill(tmp_path, [record(i) for i in range(10)], max_count=8)
    assert again.stats["written"] == 3 and again.full
    assert list(load_collection(tmp_path).column("seq")) == list(range(8))


def test_a_failed_write_is_counted_and_leaves_the_store_whole(tmp_path, monkeypatch, caplog):
    fill(tmp_path, [record(i) for i in range(8)])
    before = (tmp_path / MANIFEST).read_bytes()

    def disk_full(folder, files):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(collection_module, "replace_files", disk_full)
    with caplog.at_level(logging.ERROR):
        collector = fill(tmp_path, [record(i) for i in range(8)])
    assert collector.stats["write_failures"] == 1 and collector.stats["written"] == 0
    assert (tmp_path / MANIFEST).read_bytes() == before
    assert len(load_collection(tmp_path)) == 8
    assert not list(tmp_path.glob(".saving-*"))


def test_a_changed_shard_is_named_and_the_store_not_loaded(tmp_path):
    fill(tmp_path, [record(i) for i in range(16)])
    shards = sorted(tmp_path.glob("shard-*"))
    data = bytearray(shards[1].read_bytes())
    data[-1] ^= 0xFF
    shards[1].write_bytes(bytes(data))
    shards[0].write_bytes(shards[0].read_bytes()[:100])
    with pytest.raises(CorruptStore) as err:
        load_collection(tmp_path)
    message = str(err.value)
    assert shards[1].name in message and "SHA-256" in message
    assert shards[0].name in message and "cut short" in message


def test_a_damaged_manifest_stops_the_server_from_collecting_over_it(tmp_path):
    fill(tmp_path, [record(0)])
    (tmp_path / MANIFEST).write_text('{"format": "ddnn-collection/1", "shards": [')
    with pytest.raises(CorruptStore, match="unreadable"):
        Collector(tmp_path, max_bytes=10**6, max_count=10).start()
    with pytest.raises(DdnnError, match="not a collection store"):
        load_collection(tmp_path / "elsewhere")


def test_a_store_is_not_started_among_other_files_or_in_a_file(tmp_path):
    (tmp_path / "spec.json").write_text("{}")
    with pytest.raises(DdnnError, match="not a collection store; name a new or empty folder"):
        Collector(tmp_path, max_bytes=10**6, max_count=10).start()
    with pytest.raises(DdnnError, match="cannot collect into"):
        Collector(tmp_path / "spec.json", max_bytes=10**6, max_count=10).start()


def test_the_summary_counts_confidence_versions_and_agreement(tmp_path):
    entropies = [0.0, 0.1, 0.1, 0.4, 0.9]
    fill(tmp_path, [record(i, entropy=e, local=(i % 4) if i < 2 else 3)
                    for i, e in enumerate(entropies)])  # fmt: skip
    s = summarize(load_collection(tmp_path))
    assert s["records"] == 5 and s["versions"] == {"toy v1": 5}
    assert s["first_time"] == 1000.0 and s["last_time"] == 1004.0
    assert s["cloud_entropy_median"] == pytest.approx(0.1)
    assert s["cloud_entropy_at_most"]["0.1"] == pytest.approx(0.6)
    assert s["with_local_answer"] == 5
    assert s["local_agrees"] == pytest.approx(3 / 5)  # records 0, 1 and 3 (cloud says 3)


def test_targets_are_the_clouds_confident_answers_and_given_labels_win(tmp_path):
    fill(tmp_path, [record(i, entropy=0.5 if i % 2 else 0.05) for i in range(6)])
    labels_file = tmp_path / "labels.csv"
    labels_file.write_text("seq,label\n1,3\n2,0\n")
    (group,) = load_collection(tmp_path).groups
    rows, y, source = targets(group, 0.2, read_labels(labels_file))
    assert list(rows) == [0, 1, 2, 4]  # 3 and 5: unsure and unlabelled
    assert list(y) == [0, 3, 0, 0] and list(source) == [0, 1, 1, 0]
    labels_file.write_text("1;3\n")
    with pytest.raises(DdnnError, match="line 1"):
        read_labels(labels_file)


def test_raw_records_export_as_an_npz_dataset_ddnn_reads(tmp_path):
    store = tmp_path / "store"
    fill(store, [record(i, kind="raw") for i in range(10)])
    out = tmp_path / "set.npz"
    assert export_npz(load_collection(store), out, max_entropy=0.2) == {"samples": 10, "given": 0}
    data = create_dataset("npz", out, seed=0, val_fraction=0.0)
    assert len(data.train) + len(data.test) == 10
    with np.load(out) as z:
        assert (
            z["x"].dtype == np.uint8 and z["x"][3, 0, 0] == 3 and list(z["y"][:4]) == [0, 1, 2, 3]
        )


def test_feature_records_export_features_and_labels(tmp_path):
    fill(tmp_path / "s", [record(i) for i in range(4)])
    export_npz(load_collection(tmp_path / "s"), tmp_path / "f.npz", max_entropy=0.2)
    with np.load(tmp_path / "f.npz") as z:
        assert z["features"].shape == (4, 1, 8, 7, 7) and list(z["seq"]) == [0, 1, 2, 3]
    manifest = json.loads((tmp_path / "s" / MANIFEST).read_text())
    assert manifest["next_seq"] == 4


def test_ddnn_collect_prints_the_summary_and_writes_the_set(tmp_path, capsys):
    from ddnn.cli import main

    fill(tmp_path / "s", [record(i, kind="raw", entropy=0.1 * i) for i in range(6)])
    assert main(["collect", str(tmp_path / "s"), "--to", str(tmp_path / "o.npz")]) == 0
    out = capsys.readouterr().out
    assert "records: 6 in 1 shards" in out and "toy v1: 6" in out
    assert "o.npz: 3 samples" in out  # entropies 0, 0.1, 0.2


def test_a_shifted_image_is_the_same_image_moved_and_re_exposed():
    from ddnn.data.shifted import shift_images

    images = np.zeros((50, 8, 8), np.uint8)
    images[:, 3:5, 3:5] = 200
    moved = shift_images(images, contrast=0.5, brightness=0.1, shift=2, seed=0)
    assert moved.shape == images.shape and moved.dtype == np.uint8
    assert all(np.count_nonzero(m == 126) == 4 for m in moved)  # 0.5 * 200 + 0.1 * 255, rounded
    assert len({np.flatnonzero(m == 126)[0] for m in moved}) > 1  # not all moved alike
