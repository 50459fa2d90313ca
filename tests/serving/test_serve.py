"""`bearrec serve` and the Recommender behind it (and `bearrec recommend`): answers equal beam search and the CLI,
batched answers equal unbatched ones, concurrent requests share batches, one-line 4xx errors, read-only run
folders, the OpenAPI spec under schemathesis, the page in headless Chromium, and a bounded load test of the real `bearrec serve` process."""

from __future__ import annotations

import errno
import importlib.util
import os
import re
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from cli_helpers import one_line_error, run_cli
from hypothesis import HealthCheck, settings

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
httpx = pytest.importorskip("httpx", reason="the test extra is not installed: pip install -e '.[test]'")
schemathesis = pytest.importorskip("schemathesis", reason="the test extra is not installed: pip install -e '.[test]'")
pytestmark = pytest.mark.slow  # every test here serves a trained run

from schemathesis.config import SchemathesisConfig  # noqa: E402

from bearrec.decoding import constrained_beam_search, latent  # noqa: E402
from bearrec.serving.app import ServeSettings, create_app, running  # noqa: E402
from bearrec.serving.recommender import Query, Recommender, RecommenderSettings  # noqa: E402

ALL = ("beam", "exact", "latent")


@pytest.fixture(scope="module")
def run(tiny_run) -> Path:
    return tiny_run


@pytest.fixture(scope="module")
def recommender(run) -> Recommender:
    return Recommender.from_run(run, settings=RecommenderSettings(decoders=ALL))


@pytest.fixture(scope="module")
def histories(recommender) -> list[list[str]]:
    """Test-split histories (item ids), cut to 1 to 5 of their most recent items."""
    rows = [[str(i) for i in h] for h in recommender.dataset.splits["test"]["history"]][:12]
    return [h[-(1 + n % 5):] for n, h in enumerate(rows)]


@pytest.fixture(scope="module")
def url(recommender):
    with running(create_app(recommender, ServeSettings(max_history=50, max_body_bytes=4096), "tiny")) as base:
        yield base


def _post(url: str, body, **kwargs) -> httpx.Response:
    return httpx.post(url + "/recommend", json=body, timeout=60, **kwargs)


def _cli_ids(result) -> list[str]:
    assert result.exit_code == 0, result.output
    return re.findall(r"\(item (\S+), ", result.stdout)


# ---------------------------------------------------------------------------------------- answers
def test_answers_equal_beam_search_and_the_cli(run, recommender, url, histories):
    history = histories[2]  # three items
    indices = recommender.resolve(history)
    ids, mask = recommender.space.prompts([indices])
    config = recommender.config
    for exclude in (False, True):
        width = 10 + (len(set(indices)) if exclude else 0)
        beams = constrained_beam_search(recommender.model, ids, mask, recommender.space.trie, beam_width=width,
                                        scoring=config.scoring, length_penalty=config.decoding.length_penalty)
        expected = [(i, s) for i, s in zip(beams.item_ids[0].tolist(), beams.scores[0].tolist())
                    if i >= 0 and not (exclude and i in indices)][:5]
        body = _post(url, {"history": history, "k": 5, "exclude_history": exclude}).json()
        assert [item["id"] for item in body["items"]] == [recommender.item_ids[i] for i, _ in expected]
        assert [item["score"] for item in body["items"]] == pytest.approx([s for _, s in expected], abs=1e-5)
        assert body["exclude_history"] is exclude and body["history"] == history and body["decoder"] == "beam"
    for decoder in ALL:  # `bearrec recommend` prints the same lists as the server, for every decoder
        served = _post(url, {"history": history, "k": 5, "decoder": decoder}).json()
        printed = _cli_ids(run_cli("recommend", run, *history, "--top-k", 5, "--decoder", decoder, "--exclude-history"))
        assert printed == [item["id"] for item in served["items"]] and len(printed) == 5
        assert not set(printed) & set(history)
    assert served["score"] == "l2 similarity"


def test_batched_answers_equal_unbatched(recommender, histories):
    queries = [Query(recommender.resolve(h), k=1 + n % 10, decoder=ALL[n % 3], exclude_history=n % 2 == 0)
               for n, h in enumerate(histories)]
    queries += [Query(recommender.resolve(histories[0] * 2), k=10, decoder=d) for d in ALL]  # repeated items
    assert len(recommender.groups(queries)) < len(queries)  # some queries share a decoder call
    together = recommender.recommend(queries)
    for query, answer in zip(queries, together):
        alone = recommender.recommend([query])[0]
        assert answer.items == alone.items and len(answer.items) == query.k
        assert answer.scores == pytest.approx(alone.scores, abs=1e-4)
        assert answer.scores == sorted(answer.scores, reverse=True)
        if query.exclude_history:
            assert not set(answer.items) & set(query.history)
    exact = recommender.recommend([Query(recommender.resolve(histories[1]), k=10, decoder="exact")])[0]
    assert exact.certified is True


def test_long_history_keeps_the_most_recent_items_with_a_warning(recommender, url, histories):
    long = (histories[0] * 10)[:40]
    body = _post(url, {"history": long, "k": 3}).json()
    assert body["history_used"] == recommender.window < 40 and "trained on at most" in body["warnings"][0]


# ---------------------------------------------------------------------------------------- endpoints and errors
def test_search_health_page_and_spec(recommender, url):
    title = recommender.titles[3]
    found = httpx.get(url + "/items", params={"query": title.upper()[:6], "limit": 5}).json()["items"]
    assert found and all(item["title"].upper().startswith(title.upper()[:6]) for item in found[:1])
    assert httpx.get(url + "/items", params={"query": recommender.item_ids[7]}).json()["items"][0]["id"] == \
        recommender.item_ids[7]
    assert len(httpx.get(url + "/items", params={"limit": 3}).json()["items"]) == 3
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["items"] == len(recommender.titles) and health["decoders"] == list(ALL)
    assert health["exclude_history"] is True and health["batching"]["enabled"] is True
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and 'id="recommend"' in page.text
    spec = httpx.get(url + "/openapi.json").json()
    body = spec["components"]["schemas"]["RecommendRequest"]["properties"]
    assert body["k"]["maximum"] == 10 and body["decoder"]["enum"] == list(ALL) and body["history"]["maxItems"] == 50


@pytest.mark.parametrize("body,status,needles", [
    ({"history": ["i00000", "no-such-item"]}, 422, ["history item 2", "no-such-item", "neither an item id nor a title"]),
    ({"history": []}, 422, ["history", "empty"]),
    ({"history": ["   "]}, 422, ["history item 1", "empty"]),
    ({"history": [""]}, 422, ["history item 1"]),
    ({"history": ["i00000"], "k": 0}, 422, ["k", "1 to 10", "got 0"]),
    ({"history": ["i00000"], "k": 11}, 422, ["k", "1 to 10", "got 11"]),
    ({"history": ["i00000"], "decoder": "greedy"}, 422, ["decoder", "beam"]),
    ({"history": ["i00000"], "topk": 3}, 422, ["topk"]),
    ({"history": "i00000"}, 422, ["history"]),
    ({"history": [5]}, 422, ["history item 1", "string"]),
    ({"history": ["i00000"] * 51}, 422, ["history", "50", "--max-history"]),
    ({"history": ["x" * 999] * 5}, 413, ["too large", "4096", "--max-body-bytes"]),
])
def test_bad_requests_are_4xx_naming_the_problem(url, body, status, needles):
    response = _post(url, body)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    for needle in needles:
        assert needle in detail, detail


def test_malformed_and_oversized_bodies(url):
    response = httpx.post(url + "/recommend", content=b'{"history": [', headers={"content-type": "application/json"})
    assert response.status_code == 422 and "not valid JSON" in response.json()["detail"]
    response = httpx.post(url + "/recommend", content=b'{"history": ["\xff"]}', headers={"content-type": "application/json"})
    assert response.status_code == 400 and "UTF-8" in response.json()["detail"]

    def chunks():  # no Content-Length: the limit still holds
        yield b'{"history": ["'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"]}'

    response = httpx.post(url + "/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    response = httpx.get(url + "/items", params={"limit": 0})
    assert response.status_code == 422 and "limit" in response.json()["detail"]


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain; charset=utf-8",
                                          "application/x-www-form-urlencoded", "application/json/x", "json", None])
def test_a_body_not_sent_as_json_is_415_naming_its_content_type(url, content_type):
    headers = {} if content_type is None else {"content-type": content_type}
    response = httpx.post(url + "/recommend", content=b'{"history": ["i00000"], "k": 3}', headers=headers)
    assert response.status_code == 415, response.text
    detail = response.json()["detail"]
    assert "application/json" in detail and (content_type or "no Content-Type") in detail, detail
    for accepted in ("application/json", "Application/JSON; charset=utf-8", "application/vnd.api+json"):
        response = httpx.post(url + "/recommend", content=b'{"history": ["i00000"], "k": 3}',
                              headers={"content-type": accepted})
        assert response.status_code == 200 and len(response.json()["items"]) == 3, response.text
    files = httpx.post(url + "/recommend", files={"history": b"i00000"})
    assert files.status_code == 415 and "multipart/form-data" in files.json()["detail"]
    empty = httpx.post(url + "/recommend", headers=headers)  # no body at all: the body is missing, whatever its type
    assert empty.status_code == 422 and empty.json()["detail"].startswith("body:"), empty.text
    assert "415" in httpx.get(url + "/openapi.json").json()["paths"]["/recommend"]["post"]["responses"]


@pytest.mark.parametrize("args,needles", [
    (("--port", 70000), ["serve.port", "--port", "70000"]), (("--port", -1), ["serve.port", "--port"]),
    (("--port", 65536), ["serve.port", "--port"]),
    (("--host", ""), ["serve.host", "--host"]), (("--host", " "), ["serve.host", "--host"]),
    (("--host", "127.0.0.1\x00"), ["serve.host", "--host", "\\x00"]),
    (("--host", "\udcff"), ["serve.host", "--host"]),  # a byte that is not UTF-8 on the command line
    (("--host", "\u00fc..x"), ["cannot listen", "--host"]),  # IDNA cannot encode it
    (("--host", "no such host"), ["cannot listen", "--host"]),
])
def test_a_bad_port_or_host_is_one_error_before_the_run_is_loaded(tmp_path, args, needles):
    one_line_error(run_cli("serve", tmp_path / "missing", *args), *needles)


def test_a_bad_run_or_option_is_one_error_at_start_up(run, tmp_path):
    one_line_error(run_cli("serve", tmp_path / "missing", "--port", 0), "not a finished bearrec run")
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    weights = copy / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    one_line_error(run_cli("serve", copy, "--port", 0), "damaged")
    one_line_error(run_cli("serve", run, "--decoders", "beam,greedy"), "--decoders")
    one_line_error(run_cli("serve", run, "--max-batch", 0), "--max-batch")
    one_line_error(run_cli("serve", run, "--beam-width", 0), "--beam-width")
    one_line_error(run_cli("recommend", run, "i00000", "--decoder", "greedy"), "--decoder")
    plain = Recommender.from_run(run)  # no decoders named: the run's decoding.decoder only
    assert plain.decoders == ("beam",) and plain.default_decoder == "beam" and plain.memory is None
    with running(create_app(plain, ServeSettings())) as base:  # the port is taken
        one_line_error(run_cli("serve", run, "--port", base.rsplit(":", 1)[1]), "cannot listen")


# ---------------------------------------------------------------------------------------- read-only run folders
def _without_memory(run: Path, folder: Path) -> Path:
    """A copy of the run without its saved latent memory."""
    shutil.copytree(run, folder)
    (folder / latent.MEMORY_FILE).unlink(missing_ok=True)
    return folder


@pytest.fixture
def read_only(monkeypatch):
    """Writing the latent memory fails as on a read-only file system (mode bits do not stop root)."""

    @contextmanager
    def refuse(path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))
        yield

    monkeypatch.setattr(latent, "atomic_file", refuse)


def _cache_warning(text: str, folder: Path, reason: str) -> None:
    path = str(folder / latent.MEMORY_FILE)
    assert path in text and reason in text and "rebuilt at the next start" in text, text


def test_a_read_only_run_is_served_with_every_decoder(run, recommender, histories, tmp_path, read_only):
    copy = _without_memory(run, tmp_path / "run")
    with pytest.warns(UserWarning, match="cannot write the latent item memory cache") as caught:
        served = Recommender.from_run(copy, settings=RecommenderSettings(decoders=ALL))
    assert len(caught) == 1
    _cache_warning(str(caught[0].message), copy, "read-only file system")
    assert served.decoders == ALL and served.memory_info["memory_built"]
    left = sorted(p.name for p in copy.iterdir())
    assert left == sorted(p.name for p in run.iterdir() if p.name != latent.MEMORY_FILE)  # nothing written
    with running(create_app(served, ServeSettings())) as base:
        for decoder in ALL:
            body = _post(base, {"history": histories[3], "k": 5, "decoder": decoder}).json()
            expected = recommender.recommend([Query(recommender.resolve(histories[3]), 5, decoder)])[0]
            assert [item["id"] for item in body["items"]] == [recommender.item_ids[i] for i in expected.items]


def _recommend_latent(folder: Path, history: list[str]):
    result = run_cli("recommend", folder, *history, "--top-k", 5, "--decoder", "latent")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning:"), result.stderr
    return _cli_ids(result), lines[0]


def test_recommend_latent_on_a_read_only_run(run, recommender, histories, tmp_path, read_only):
    copy = _without_memory(run, tmp_path / "run")
    ids, warning = _recommend_latent(copy, histories[3])
    _cache_warning(warning, copy, "read-only file system")
    expected = recommender.recommend([Query(recommender.resolve(histories[3]), 5, "latent", False)])[0]
    assert ids == [recommender.item_ids[i] for i in expected.items]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder whatever its mode")
def test_recommend_latent_in_a_folder_without_write_permission(run, histories, tmp_path):
    copy = _without_memory(run, tmp_path / "run")
    copy.chmod(0o555)
    try:
        ids, warning = _recommend_latent(copy, histories[3])
    finally:
        copy.chmod(0o755)
    _cache_warning(warning, copy, "permission denied")
    assert len(ids) == 5 and not (copy / latent.MEMORY_FILE).exists()


# ---------------------------------------------------------------------------------------- batching
def _concurrent(base: str, bodies: list[dict]) -> list[dict]:
    """POST every body at once from its own thread; the answers in order."""
    barrier = threading.Barrier(len(bodies))
    answers: list = [None] * len(bodies)

    def client(n: int) -> None:
        barrier.wait()
        answers[n] = _post(base, bodies[n])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(a is not None and a.status_code == 200 for a in answers), answers
    return [a.json() for a in answers]


def test_concurrent_requests_share_batches_and_answers_do_not_change(recommender, histories):
    bodies = [{"history": h[-2:], "k": 10, "exclude_history": False} for h in histories[:8]]  # one search width
    expected = [recommender.recommend([Query(recommender.resolve(b["history"]), 10, "beam", False)])[0] for b in bodies]
    for batching in (True, False):
        settings = ServeSettings(batching=batching, batch_wait_ms=2000, max_batch=8)
        app = create_app(recommender, settings)
        with running(app) as base:
            answers = _concurrent(base, bodies)
            stats = httpx.get(base + "/health").json()["batching"]
        for answer, alone in zip(answers, expected):
            assert [item["id"] for item in answer["items"]] == [recommender.item_ids[i] for i in alone.items]
            assert [item["score"] for item in answer["items"]] == pytest.approx(alone.scores, abs=1e-4)
        assert stats["requests"] == 8 and stats["enabled"] is batching
        if batching:  # 8 clients at once, a batch waits up to 2 s for 8: they share batches and decoder calls
            assert stats["largest_batch"] > 1 and stats["batches"] < 8
            assert max(int(n) for n in stats["decoder_calls"]) > 1
        else:
            assert stats["batch_sizes"] == {"1": 8}


def test_a_failing_batch_answers_500_and_the_server_goes_on(recommender, url, histories, monkeypatch):
    def broken(queries):
        raise RuntimeError("decoder crashed")

    monkeypatch.setattr(recommender, "recommend", broken)
    assert _post(url, {"history": histories[0]}).status_code == 500  # answered, not left waiting
    monkeypatch.undo()
    assert _post(url, {"history": histories[0]}).status_code == 200


# ---------------------------------------------------------------------------------------- the OpenAPI spec
@pytest.fixture
def api_schema(url, recommender):
    # Invalid data must be refused with our client errors: 422, 413 when it is also over the body limit, 400 for
    # bytes that are not text.
    config = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": ["400", "413",
                                                                                                       "422"]}}})
    schema = schemathesis.openapi.from_url(url + "/openapi.json", config=config)
    ids = recommender.item_ids

    @schema.hook("map_case")
    def catalog_histories(context, case):
        """Positive cases name real items: the spec cannot list a catalog, and an unknown item is a 422 by design
        (tested above). Negative cases are left as generated."""
        meta = case.meta
        body = case.body
        if meta is not None and meta.generation.mode.is_positive and isinstance(body, dict) \
                and isinstance(body.get("history"), list):
            body["history"] = [ids[len(str(entry)) % len(ids)] for entry in body["history"]][:5] or [ids[0]]
        return case

    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_spec_holds(case):
    """Every operation, with valid and invalid data: no 5xx, documented status codes and bodies, valid data
    accepted and invalid data refused with a 4xx."""
    case.call_and_validate(timeout=60)


# ---------------------------------------------------------------------------------------- the page, in Chromium
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_page_in_headless_chromium(url, recommender):
    missing = []
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package (pip install -e '.[test]')")
    if _chromium() is None:
        missing.append("Debian's chromium (apt-get install chromium)")
    if missing:
        if os.environ.get("CI"):
            pytest.fail("CI must run the page test; missing " + " and ".join(missing))
        pytest.skip("needs " + " and ".join(missing))
    from playwright.sync_api import expect, sync_playwright

    titles = recommender.titles
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(url + "/")
            expect(page.locator("body")).to_have_attribute("data-ready", "true")
            expect(page.locator("#about")).to_contain_text(f"{len(titles)} items")
            page.fill("#search", titles[2][:8])  # pick from the search results
            pick = page.locator("#results button").first
            expect(pick).to_contain_text(titles[2][:8])
            picked_id = pick.get_attribute("data-id")
            pick.click()
            page.fill("#search", titles[5])  # type an exact title, Enter adds it
            page.press("#search", "Enter")
            expect(page.locator("#history li")).to_have_count(2)
            page.fill("#k", "4")
            page.click("#recommend")
            rows = page.locator("#recommendations tbody tr")
            expect(rows).to_have_count(4)
            shown = [rows.nth(n).locator("td").nth(2).inner_text() for n in range(4)]
            served = _post(url, {"history": [picked_id, titles[5]], "k": 4}).json()
            assert shown == [item["id"] for item in served["items"]]
            assert rows.nth(0).locator("td").nth(3).inner_text() == f"{served['items'][0]['score']:.3f}"
            page.fill("#search", "no such item at all")  # an unknown entry: the server's message is shown
            page.press("#search", "Enter")
            page.click("#recommend")
            expect(page.locator("#error")).to_contain_text("history item 3")
            expect(page.locator("#recommendations")).to_be_hidden()
            page.locator("#history li button").nth(2).click()  # remove it, and the page recommends again
            page.click("#recommend")
            expect(rows).to_have_count(4)
            expect(page.locator("#error")).to_have_text("")
        finally:
            browser.close()


# ---------------------------------------------------------------------------------------- load, bounded
def _bench():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_serve.py"
    spec = importlib.util.spec_from_file_location("bench_serve", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bounded_load_on_the_real_server_process(run, recommender):
    """`bearrec serve` as users start it, under concurrent load: every request answered, none hangs (counts and
    timeouts only; the speed is measured in benchmarks/bench_serve.py)."""
    bench = _bench()
    bodies = bench.request_bodies(recommender.dataset, k=5)
    process, base = bench.start_server(run, "--batch-wait-ms", "5", "--decoders", "beam,exact")
    try:
        for clients in (1, 8, 32):
            result = bench.load(base, bodies, clients, requests=32, timeout=60, total_timeout=240)
            assert result["ok"] == 32 and result["failed"] == 0, result["errors"]
        stats = httpx.get(base + "/health").json()["batching"]
        assert stats["requests"] == 96
    finally:
        assert bench.stop_server(process) == 0
