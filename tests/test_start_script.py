"""The README's run command, end to end on real MovieLens-100k (slow: it trains)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recserve import Client

ROOT = Path(__file__).resolve().parents[1]


def rated_by(user: int) -> set[int]:
    lines = (ROOT / "data" / "ml-100k" / "ml-100k.inter").read_text().splitlines()[1:]
    return {int(item) for u, item, *_ in (line.split("\t") for line in lines) if int(u) == user}


@pytest.mark.slow
def test_start_script_trains_serves_and_answers(
    tmp_path: Path, run_recserve, free_port: int
) -> None:
    port = free_port
    env = {
        **os.environ,
        "RECSERVE_MODEL_REPO": str(tmp_path / "repo"),
        "RECSERVE_PORT": str(port),
        "RECSERVE_METRICS_PORT": "0",  # any free port: tests never collide on 9464
        "PYTHONUNBUFFERED": "1",
    }
    with (
        (tmp_path / "start.log").open("w") as log,
        subprocess.Popen(
            ["bash", "scripts/start.sh"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        ) as server,
    ):
        try:
            deadline = time.monotonic() + 600
            with Client(f"127.0.0.1:{port}", timeout=2) as client:
                while not client.is_serving():
                    assert server.poll() is None, (tmp_path / "start.log").read_text()
                    assert time.monotonic() < deadline, "not serving after 10 minutes"
                    time.sleep(1)
            target = ("--target", f"127.0.0.1:{port}")
            recommended = run_recserve("recommend", "--user", "196", "-k", "10", "--json", *target)
            assert recommended.returncode == 0, recommended.stderr
            answer = json.loads(recommended.stdout)
            # the default Recommend: the cascade
            assert (answer["model_name"], answer["ranked_by_name"]) == ("sasrec", "din")
            items = answer["items"]
            assert len(items) == 10 and all(i["title"] for i in items)
            assert not {i["item_id"] for i in items} & rated_by(196)

            ranked = run_recserve(
                "rank", "--user", "196", "--items", "1,50,100,181,258", "--json", *target
            )
            assert ranked.returncode == 0, ranked.stderr
            assert sorted(i["item_id"] for i in json.loads(ranked.stdout)["items"]) == [
                1,
                50,
                100,
                181,
                258,
            ]
            # DeepFM trains in the background once the cascade serves; the server's
            # repository poll loads it when it is exported
            with Client(f"127.0.0.1:{port}", timeout=2) as client:
                while "deepfm" not in [m.name for m in client.list_models()[0]]:
                    assert server.poll() is None, (tmp_path / "start.log").read_text()
                    assert time.monotonic() < deadline + 300, "deepfm not served"
                    time.sleep(2)
                ranked_by_deepfm = client.rank(196, [1, 50, 100, 181, 258], model="deepfm")
                assert len(ranked_by_deepfm.items) == 5
            server.send_signal(signal.SIGINT)
            assert server.wait(timeout=30) == 0
        finally:
            if server.poll() is None:
                server.kill()
    output = (tmp_path / "start.log").read_text()
    print(output[-3000:], file=sys.stderr)
    assert "serving din v1, sasrec v1 on" in output and "loaded deepfm/1" in output
    assert "Traceback" not in output

    def metrics(model: str) -> dict[str, float]:
        manifest = tmp_path / "repo" / model / "1" / "manifest.json"
        return json.loads(manifest.read_text())["metrics"]

    # The acceptance bars of the two models (docs/results.md): the ranker's AUC, and the
    # retriever's leave-one-out NDCG@10 well above most-popular's 0.045.
    assert metrics("deepfm")["test_auc"] >= 0.78
    assert metrics("sasrec")["test_ndcg@10"] >= 0.09
    # and the cascade's ranker orders the retriever's items better than the retriever, on
    # the users its blend was not fitted to
    din = metrics("din")
    assert din["test_ndcg@10"] > din["test_retriever_ndcg@10"]
