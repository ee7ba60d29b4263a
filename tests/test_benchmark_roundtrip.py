"""The built-in benchmark read back through the VOC reader and scored by the metrics (spans 01-03)."""
import numpy as np
import pytest
import torch

from wsss_nb.data import VOCDataset, collate, train_transform
from wsss_nb.metrics import SegEvaluator
from wsss_nb.synthetic import make_benchmark


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_benchmark(tmp_path_factory.mktemp("b") / "bench", n_train=12, n_val=4, size=64, seed=1)


def test_reader_reads_every_sample(bench):
    for split, n in (("train", 12), ("val", 4)):
        ds = VOCDataset(bench, split)
        assert len(ds) == n and ds.num_classes == len(ds.classes) + 1
        for i in range(n):
            s = ds[i]
            m, b = s["mask"], s["boxes"]
            assert s["image"].shape == (3, 64, 64) and m.shape == (64, 64)
            present = set(m.unique().tolist()) - {0, 255}
            # labels come from the mask and agree with the boxes' classes
            assert {i + 1 for i in torch.nonzero(s["labels"]).ravel().tolist()} == present
            assert set(b[:, 4].long().tolist()) == present
            # every pixel of a class lies inside the union of that class's boxes
            for c in present:
                inside = torch.zeros_like(m, dtype=torch.bool)
                for x1, y1, x2, y2, k in b.long().tolist():
                    if k == c: inside[y1:y2, x1:x2] = True
                assert not ((m == c) & ~inside).any(), (s["name"], c)


def test_ground_truth_scores_perfectly_and_shifted_does_not(bench):
    ds = VOCDataset(bench, "val")
    ev, ev_shift = SegEvaluator(ds.num_classes), SegEvaluator(ds.num_classes)
    for i in range(len(ds)):
        gt = ds[i]["mask"].numpy()
        pred = np.where(gt == 255, 0, gt)
        ev.update(pred, gt)
        ev_shift.update(np.roll(pred, 4, axis=1), gt)
    s, t = ev.summary(), ev_shift.summary()
    assert s["mIoU"] == pytest.approx(1.0) and s["F"] == pytest.approx(1.0) and s["bIoU"] == pytest.approx(1.0)
    assert s["J&F"] == pytest.approx(1.0)
    assert t["mIoU"] < 0.95 and t["F"] < s["F"] and t["bIoU"] < s["bIoU"]


def test_training_batches(bench):
    torch.manual_seed(0)
    ds = VOCDataset(bench, "train", transform=train_transform(crop=48))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate, num_workers=0)
    b = next(iter(loader))
    assert b["image"].shape == (4, 3, 48, 48) and b["labels"].shape == (4, len(ds.classes))
    assert len(b["boxes"]) == 4 and all(x.shape[1] == 5 for x in b["boxes"])
