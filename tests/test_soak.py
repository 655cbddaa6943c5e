"""A short soak of a real ``metaserve serve`` (``bench/soak.py`` runs the long one): clients adapting,
predicting and deleting while a meta-training job runs get no error but deliberate 429/503s, every session
acknowledged and not deleted still predicts as it did, and the server's memory stays bounded (its device
memory read from /metrics on CUDA)."""

from __future__ import annotations

import torch

from bench import soak

MAX_RSS_GROWTH_MB = 150
"""Most the server's RSS may grow over the soak (it grows by some 10 MB as caches and sessions fill)."""


def test_a_short_soak_has_no_errors_serves_every_kept_session_and_bounds_memory() -> None:
    args = soak.parser().parse_args(
        ["--seconds", "20", "--clients", "16", "--warmup-seconds", "8", "--sample-seconds", "0.5"]
    )
    report = soak.run(args)
    print(soak.markdown(report))
    assert report["errors"] == 0, report["error_examples"]
    assert report["requests"] >= 200, report["requests"]
    assert report["sessions_served"] == report["sessions_kept"] > 0
    assert report["sessions_deleted"] > 0 and report["predictions_checked"] > report["sessions_kept"]
    assert report["job"] is not None and report["job"]["state"] in ("queued", "running"), report["job"]
    rss = report["rss_mb"]
    assert rss["max"] - rss["first"] < MAX_RSS_GROWTH_MB, rss
    assert (report["device_mb"] is None) == (not torch.cuda.is_available()), "device memory is read on CUDA"
