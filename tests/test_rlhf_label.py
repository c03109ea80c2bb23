"""`rlhf label`: the JSON API driven over HTTP on the tiny model (rank, refuse bad orders, leases, restart),
the page's own handlers, and the rankings file training `rlhf reward`."""

from __future__ import annotations

import importlib
import json
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx  # installed with gradio: the `label` extra, also in `dev`
import pytest
from rlhf.label import LabelArguments, build, create_app, serve

from classic_rl.safe_io import UserError

pytest_plugins = [f"{__package__}.rlhf_fixtures" if __package__ else "rlhf_fixtures"]
pytest.register_assert_rewrite(pytest_plugins[0])
fixtures = importlib.import_module(pytest_plugins[0])

PROMPTS = [json.loads(line)["prompt"] for line in (fixtures.DATA / "prompts.jsonl").read_text().splitlines()[:6]]


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def label_args(model: Path | None, dataset: Path, output: Path, **extra) -> LabelArguments:
    flags = {"num_responses": 3, "max_new_tokens": 8, "port": 0, **extra}
    if model:
        flags["model_name_or_path"] = str(model)
    return LabelArguments(dataset_name=str(dataset), output_file=str(output), **flags)


@contextmanager
def running(args: LabelArguments):
    """The label server on a free port of 127.0.0.1, in this process; yields (http client, queue)."""
    queue, slots = build(args)
    app, _ = create_app(queue, slots)
    server = serve(app, args.host, 0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the label server did not start"
        time.sleep(0.05)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    assert host == "127.0.0.1"
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client, queue
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        queue.close()


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_rank_appends_the_ranking_best_first_and_serves_the_page(rlhf_tiny_model, prompts_file, tmp_path):
    out = tmp_path / "rankings.jsonl"
    with running(label_args(rlhf_tiny_model, prompts_file, out)) as (client, _):
        item = client.get("/api/next").json()
        assert item["prompt"] == PROMPTS[0] and len(item["responses"]) == 3
        assert item["progress"] == {"ranked": 0, "total": 6, "skipped": 0, "leased": 1}
        answer = client.post("/api/rank", json={"id": item["id"], "order": [2, 0, 1]})
        assert answer.status_code == 200 and answer.json()["progress"]["ranked"] == 1
        r = item["responses"]
        assert lines(out) == [{"prompt": PROMPTS[0], "responses": [r[2], r[0], r[1]]}]
        assert client.post("/api/rank", json={"id": item["id"], "order": [0, 1, 2]}).status_code == 409
        assert len(lines(out)) == 1  # a double submit writes nothing
        assert client.get("/api/next").json()["prompt"] == PROMPTS[1]
        page = client.get("/")
        assert page.status_code == 200 and "gradio" in page.text.lower()


@pytest.mark.parametrize("order", [[0, 0, 1], [0, 1], [0, 1, 2, 3], [0, 1, 3], [True, 0, 2], ["0", "1", "2"], None])
def test_an_order_that_is_not_a_permutation_is_refused_and_nothing_is_written(
    rlhf_tiny_model, prompts_file, tmp_path, order
):
    out = tmp_path / "rankings.jsonl"
    with running(label_args(rlhf_tiny_model, prompts_file, out)) as (client, queue):
        item = client.get("/api/next").json()
        answer = client.post("/api/rank", json={"id": item["id"], "order": order})
        assert answer.status_code == 400 and "not a ranking of the 3 responses" in answer.json()["error"]
        for body in ({"id": "nope", "order": [0, 1, 2]}, {"id": "99-abc", "order": [0, 1, 2]}, {"order": [0, 1, 2]}):
            refused = client.post("/api/rank", json=body)
            assert refused.status_code == 400 and refused.json()["error"]
        assert out.read_text() == "" and queue.progress()["ranked"] == 0
        # the refused answers did not lose the lease: the right order still lands
        assert client.post("/api/rank", json={"id": item["id"], "order": [1, 2, 0]}).status_code == 200
        assert len(lines(out)) == 1


def test_concurrent_next_calls_get_different_prompts(rlhf_tiny_model, prompts_file, tmp_path):
    with running(label_args(rlhf_tiny_model, prompts_file, tmp_path / "r.jsonl")) as (client, _):
        start = threading.Barrier(4)
        got: list[dict] = []

        def tab() -> None:
            start.wait()
            got.append(client.get("/api/next").json())

        tabs = [threading.Thread(target=tab) for _ in range(4)]
        for t in tabs:
            t.start()
        for t in tabs:
            t.join()
        assert len({g["prompt"] for g in got}) == 4 and len({g["id"] for g in got}) == 4
        # the same tab asking again (a reload) keeps its prompt; another tab gets a new one
        mine = client.get("/api/next", params={"client": "tab-a"}).json()
        assert client.get("/api/next", params={"client": "tab-a"}).json()["id"] == mine["id"]
        assert client.get("/api/next", params={"client": "tab-b"}).json()["prompt"] != mine["prompt"]
        # every prompt is now open in some tab: the next caller is told to wait, not that all is done
        waiting = client.get("/api/next").json()
        assert waiting["done"] is False and waiting["waiting"] == 6


def test_an_expired_lease_goes_to_the_next_tab_and_the_old_id_is_refused(rlhf_tiny_model, prompts_file, tmp_path):
    out = tmp_path / "r.jsonl"
    with running(label_args(rlhf_tiny_model, prompts_file, out, lease_timeout=0.5)) as (client, _):
        first = client.get("/api/next").json()
        time.sleep(0.6)
        again = client.get("/api/next").json()
        assert again["prompt"] == first["prompt"] and again["id"] != first["id"]
        assert again["responses"] == first["responses"]  # sampled once, shown the same to the next tab
        stale = client.post("/api/rank", json={"id": first["id"], "order": [0, 1, 2]})
        assert stale.status_code == 409 and "another tab" in stale.json()["error"]
        assert out.read_text() == ""


def test_restart_continues_skips_and_finishes(rlhf_tiny_model, prompts_file, tmp_path):
    out = tmp_path / "r.jsonl"
    args = label_args(rlhf_tiny_model, prompts_file, out)
    with running(args) as (client, _):
        for _ in range(2):
            item = client.get("/api/next").json()
            assert client.post("/api/rank", json={"id": item["id"], "order": [0, 1, 2]}).status_code == 200
        left_open = client.get("/api/next").json()  # leased, never answered: served again after a restart
    assert [row["prompt"] for row in lines(out)] == PROMPTS[:2]
    with running(args) as (client, _):
        with pytest.raises(UserError, match="in use by another `rlhf label`"):
            build(args)  # a second server on the same file would serve the same prompts again
        item = client.get("/api/next").json()
        assert item["prompt"] == left_open["prompt"] == PROMPTS[2]
        assert item["progress"]["ranked"] == 2
        skipped = client.post("/api/skip", json={"id": item["id"]})
        assert skipped.status_code == 200 and skipped.json()["progress"]["skipped"] == 1
        while "id" in (item := client.get("/api/next").json()):
            assert item["prompt"] not in PROMPTS[:3]
            assert client.post("/api/rank", json={"id": item["id"], "order": [2, 1, 0]}).status_code == 200
        assert item == {"done": True, "progress": {"ranked": 5, "total": 6, "skipped": 1, "leased": 0}}
    assert sorted(row["prompt"] for row in lines(out)) == sorted(PROMPTS[:2] + PROMPTS[3:])
    with running(args) as (client, _):  # the skipped prompt comes back after a restart
        assert client.get("/api/next").json()["prompt"] == PROMPTS[2]


def test_given_responses_are_ranked_without_a_model(tmp_path):
    data = tmp_path / "given.jsonl"
    data.write_text(json.dumps({"prompt": "p", "responses": ["a", "b", "c", "d"]}) + "\n"
                    + json.dumps({"prompt": "q", "responses": ["x", "y"]}) + "\n")
    out = tmp_path / "r.jsonl"
    with running(label_args(None, data, out)) as (client, _):
        item = client.get("/api/next").json()
        assert sorted(item["responses"]) == ["a", "b", "c", "d"]
        assert item["responses"] != ["a", "b", "c", "d"]  # shown shuffled, not in the file's best-first order
        order = sorted(range(4), key=lambda i: item["responses"][i])
        assert client.post("/api/rank", json={"id": item["id"], "order": order}).status_code == 200
        assert sorted(client.get("/api/next").json()["responses"]) == ["x", "y"]
    assert lines(out) == [{"prompt": "p", "responses": ["a", "b", "c", "d"]}]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "q", "chosen": "yes", "rejected": "no"}) + "\n")
    with running(label_args(None, pairs, tmp_path / "r2.jsonl")) as (client, _):
        assert sorted(client.get("/api/next").json()["responses"]) == ["no", "yes"]


def test_bad_input_is_one_clear_error(rlhf_tiny_model, prompts_file, tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "p", "responses": ["a", "b"]}\n{"prompt": "q", "respon')
    with pytest.raises(UserError, match=r"broken.jsonl, line 2: not valid JSON"):
        build(label_args(rlhf_tiny_model, prompts_file, broken))
    assert broken.read_text().endswith('"respon')  # the user's file is left as it was
    with pytest.raises(UserError, match="--model_name_or_path is required"):
        build(label_args(None, prompts_file, tmp_path / "r.jsonl"))
    assert not (tmp_path / "r.jsonl").exists()  # a refused start leaves no empty rankings file behind
    with pytest.raises(UserError, match="--num_responses 1"):
        build(label_args(rlhf_tiny_model, prompts_file, tmp_path / "r.jsonl", num_responses=1))
    assert LabelArguments().host == "127.0.0.1" and LabelArguments().share is False


def test_without_gradio_the_command_says_how_to_install_it(monkeypatch, prompts_file, tmp_path):
    from rlhf import label

    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now raises ImportError
    with pytest.raises(UserError) as err:
        label.main(["--dataset_name", str(prompts_file), "--output_file", str(tmp_path / "r.jsonl")])
    assert str(err.value) == 'rlhf label needs gradio: pip install -e ".[label]"'


def test_page_handlers_rank_by_clicks(rlhf_tiny_model, prompts_file, tmp_path):
    """The page's click handlers, called as gradio calls them: pick, undo, submit writes and moves on."""
    out = tmp_path / "r.jsonl"
    queue, slots = build(label_args(rlhf_tiny_model, prompts_file, out))
    _, page = create_app(queue, slots)
    fns = {fn.fn.__name__: fn.fn for fn in page.fns.values()}

    class Request:
        session_hash = "tab-1"

    current, order, progress, *_ = fns["on_load"](Request())
    assert progress == "**0 / 6** ranked" and current["prompt"] == PROMPTS[0]
    pick = [fn.fn for fn in page.fns.values() if fn.fn.__name__ == "<lambda>"]
    current, order, *_ = pick[1](current, order)
    current, order, *_ = fns["on_undo"](current, order)
    assert order == []
    current, order, *_ = pick[2](current, order)
    current, order, *view = pick[0](current, order)
    assert order == [2, 0, 1]  # the last response is ranked worst by elimination
    current, order, *_ = pick[0](current, order)  # clicking a ranked one takes it and those after it back
    assert order == [2]
    current, order, *_ = pick[0](current, order)
    assert order == [2, 0, 1]
    assert out.read_text() == ""
    nxt, order, progress, *_ = fns["on_submit"](current, order, Request())
    r = current["responses"]
    assert lines(out) == [{"prompt": PROMPTS[0], "responses": [r[2], r[0], r[1]]}]
    assert progress == "**1 / 6** ranked" and nxt["prompt"] == PROMPTS[1] and order == []
    queue.close()


def test_the_next_prompts_are_sampled_ahead_with_the_same_responses(rlhf_tiny_model, prompts_file, tmp_path):
    args = label_args(rlhf_tiny_model, prompts_file, tmp_path / "r.jsonl")
    queue, _ = build(args)
    queue.start_prefetch(ahead=2)
    deadline = time.monotonic() + 60
    while not (queue.items[0].responses and queue.items[1].responses):
        assert time.monotonic() < deadline, "the first two prompts were not sampled ahead"
        time.sleep(0.05)
    ahead = [list(item.responses) for item in queue.items[:2]]
    assert queue.items[2].responses is None  # only `ahead` prompts are sampled early
    first = queue.next()
    assert first["responses"] == ahead[0]
    queue.close()
    fresh, _ = build(args)  # the same seed samples the same responses, ahead of time or not
    assert [fresh.next()["responses"], fresh.next()["responses"]] == ahead
    fresh.close()


@pytest.mark.slow
def test_rankings_train_the_reward_model(rlhf_tiny_model, prompts_file, tmp_path):
    """The file `rlhf label` writes is a dataset `rlhf reward` trains on."""
    from rlhf.reward import main as reward_main

    out = tmp_path / "r.jsonl"
    with running(label_args(rlhf_tiny_model, prompts_file, out)) as (client, _):
        while "id" in (item := client.get("/api/next").json()):
            shortest_first = sorted(range(3), key=lambda i: len(item["responses"][i]))
            assert client.post("/api/rank", json={"id": item["id"], "order": shortest_first}).status_code == 200
    assert len(lines(out)) == 6
    summary = reward_main([
        "--model_name_or_path", str(rlhf_tiny_model), "--dataset_name", str(out), "--output_dir", str(tmp_path / "rm"),
        "--max_steps", "2", "--per_device_train_batch_size", "2", "--eval_holdout_fraction", "0",
        "--calibrate", "false", "--seed", "0", *fixtures.QUIET,
    ])
    assert summary["dataset_format"] == "ranking" and summary["num_train_examples"] == 6
    assert summary["global_step"] == 2 and summary["train_loss"] > 0
    assert (tmp_path / "rm" / "config.json").exists()
