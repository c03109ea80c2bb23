"""`rlhf label`: rank K responses per prompt by hand in a local web page; the rankings train `rlhf reward`.

Step 2 of InstructGPT: a person orders K responses to one prompt from best to worst. This command samples
K responses per prompt from a model (or reads them when the dataset already has `responses` or
`chosen`/`rejected`), serves a page (gradio) where a person orders them by clicks or keys, and appends
each ranking to a JSONL file as `{"prompt", "responses": [best, ..., worst]}`, the format `rlhf reward`
reads. Each ranking is written and fsync'ed before the next prompt is shown, so a crash loses nothing that
was ranked; restarting on the same file continues where it stopped.

A small JSON API sits beside the page, for scripts and tests:
  GET  /api/next[?client=NAME]   -> {"id", "prompt", "responses", "progress"} or {"done": true, "progress"}
  POST /api/rank {"id", "order"} -> order: indices into `responses`, best first; 400 if not a permutation
  POST /api/skip {"id"}          -> the prompt is not served again in this session (nothing is written)
  GET  /api/progress             -> {"ranked", "total", "skipped", "leased"}
A prompt handed out by `next` is leased to that caller until it is ranked, skipped or the lease times out
(`--lease_timeout`), so two browser tabs never rank the same prompt at once.
"""

from __future__ import annotations

import heapq
import json
import os
import random
import secrets
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classic_rl.safe_io import UserError, dumps_strict

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one `rlhf label` per file is then up to the user
    fcntl = None

INSTALL_HINT = 'rlhf label needs gradio: pip install -e ".[label]"'
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class LabelArguments:
    """Flags of `rlhf label`."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Prompts to rank: a .jsonl/.json/.parquet file, directory or hub id with a `prompt` column "
                  "(plus `responses`, or `chosen`/`rejected`, to rank given responses instead of sampling)."},
    )
    output_file: str | None = field(
        default=None,
        metadata={"help": "JSONL file the rankings are appended to ({prompt, responses: [best, ..., worst]}); "
                  "prompts already ranked there are not served again."},
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Model whose responses are ranked (needed unless the dataset has responses)."}
    )
    num_responses: int = field(default=4, metadata={"help": "K: responses sampled per prompt."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    max_new_tokens: int = field(default=64, metadata={"help": "Length limit of a sampled response, in tokens."})
    seed: int = field(default=0, metadata={"help": "Sampling seed (each prompt's responses depend on it and the row)."})
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name (hub datasets)."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split whose prompts are served."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind; 0.0.0.0 exposes the page to your network."})
    port: int = field(default=7860, metadata={"help": "Port of the page (0: any free port)."})
    share: bool = field(default=False, metadata={"help": "Also open a public gradio share link (off by default)."})
    lease_timeout: float = field(
        default=600.0, metadata={"help": "Seconds a prompt stays reserved for the tab that opened it."}
    )
    revision: str | None = field(default=None, metadata={"help": "Model revision (hub models)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run the model repository's own code (off)."})


# ----------------------------------------------------------------------------------------------- rankings file
def prompt_key(prompt: Any) -> str:
    """A prompt's identity (a string or a list of chat messages) for 'already ranked' checks."""
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


class RankingFile:
    """The JSONL file the rankings are appended to: read once at start, then append-only, each line fsync'ed.

    The file stays open and locked (flock) while the command runs, so a second `rlhf label` on the same
    file stops with a clear error instead of serving the same prompts again. `close()` releases it.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._needs_newline = False
        self.ranked_keys: set[str] = set()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", encoding="utf-8")
        except OSError as err:
            raise UserError(f"--output_file {self.path} cannot be opened for writing: {err.strerror}") from err
        if fcntl is not None:
            try:
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                self._handle.close()
                raise UserError(
                    f"--output_file {self.path} is in use by another `rlhf label`; stop that one or choose "
                    "another file"
                ) from err
        try:
            self._read_existing()  # after taking the lock: nobody else appends from here on
        except UserError:
            self._handle.close()
            raise

    def _read_existing(self) -> None:
        text = self.path.read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(
                    f"{self.path}, line {number}: not valid JSON ({err.msg}); fix or remove that line, then restart"
                ) from err
            if not (isinstance(row, dict) and "prompt" in row and isinstance(row.get("responses"), list)):
                raise UserError(
                    f"{self.path}, line {number}: expected {{prompt, responses}}; is this a rankings file "
                    "written by `rlhf label`? Choose another --output_file"
                )
            self.ranked_keys.add(prompt_key(row["prompt"]))
        self._needs_newline = bool(text) and not text.endswith("\n")

    def append(self, prompt: Any, responses_best_first: list[str]) -> None:
        """Append one ranking and make it durable (flush + fsync) before returning."""
        line = dumps_strict({"prompt": prompt, "responses": responses_best_first}, ensure_ascii=False) + "\n"
        with self._lock:
            if self._handle.closed:
                raise RuntimeError(f"{self.path} is closed")
            if self._needs_newline:  # a hand-edited file without a final newline: keep its last line whole
                line = "\n" + line
            try:
                self._handle.write(line)
                self._handle.flush()
                os.fsync(self._handle.fileno())
            except OSError:
                self._needs_newline = True  # a partial line may be on disk: the next one starts on its own line
                raise
            self._needs_newline = False
            self.ranked_keys.add(prompt_key(prompt))

    def close(self) -> None:
        with self._lock:
            self._handle.close()  # also releases the lock


# ----------------------------------------------------------------------------------------------- the queue
class LabelError(ValueError):
    """A request the queue refuses; `status` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Item:
    """One prompt to rank: its dataset row, the responses shown (None until sampled) and its lease."""

    row: int
    prompt: Any
    responses: list[str] | None = None
    token: str | None = None  # the current lease; its id is f"{row}-{token}"
    owner: str | None = None
    expires: float = 0.0


Responder = Callable[[Item], list[str]]


class LabelQueue:
    """Which prompt to serve next, leases, ranking and skipping; thread-safe, independent of the web page.

    Every request costs the same however many prompts there are (it runs under one lock that all the
    tabs share): the open prompts not leased wait in a heap by dataset row (the next one served is the
    first of them, as in the file), leases sit in a dict with a heap of their expiry times, and the
    counts of ranked, skipped and leased prompts are kept as they change. Heap entries are checked when
    they come up and dropped if stale (a prompt since ranked, leased or renewed).
    """

    def __init__(
        self,
        prompts: Sequence[Any],
        ranking_file: RankingFile,
        respond: Responder,
        lease_timeout: float = 600.0,
        given_responses: Sequence[list[str]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.file = ranking_file
        self.respond = respond
        self.lease_timeout = lease_timeout
        self.clock = clock
        self._lock = threading.Lock()
        self._respond_lock = threading.Lock()  # one sampling at a time: the model is shared
        self.items: list[Item] = []
        seen: set[str] = set()
        self._ranked_rows: set[int] = set()
        for row, prompt in enumerate(prompts):
            key = prompt_key(prompt)
            if key in seen:  # a prompt is ranked once; repeats would count twice in progress
                continue
            seen.add(key)
            self.items.append(Item(row, prompt, list(given_responses[row]) if given_responses is not None else None))
            if key in ranking_file.ranked_keys:
                self._ranked_rows.add(row)
        self.duplicates = len(prompts) - len(self.items)
        self.skipped: set[int] = set()
        self._by_row = {item.row: item for item in self.items}
        self._free = [item.row for item in self.items if item.row not in self._ranked_rows]  # sorted: a heap
        self._leases: dict[int, Item] = {}  # row -> its item, while the lease runs
        self._expiry: list[tuple[float, int, str]] = []  # heap of (expires, row, token)
        self._owned: dict[str, set[int]] = {}  # client -> rows it holds
        self._writing: set[int] = set()  # rows whose ranking is being appended (outside the lock)
        self._wake = threading.Event()
        self._prefetcher: threading.Thread | None = None
        self._closed = False

    # -- sampling ahead, so the person does not wait for the model after each ranking
    def start_prefetch(self, ahead: int = 2) -> None:
        """Keep the responses of the next `ahead` free prompts sampled, in a background thread."""
        if self._prefetcher is None:
            self._prefetcher = threading.Thread(target=self._prefetch_loop, args=(ahead,), daemon=True,
                                                name="rlhf-label-prefetch")
            self._prefetcher.start()
            self._wake.set()

    def close(self) -> None:
        """Stop sampling ahead (waits for a sampling in progress) and close the rankings file."""
        self._closed = True
        self._wake.set()
        if self._prefetcher is not None:
            self._prefetcher.join()
        self.file.close()

    def _prefetch_loop(self, ahead: int) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            while not self._closed:
                with self._lock:
                    self._expire(self.clock())
                    todo = next((it for it in self._peek_free(ahead) if it.responses is None), None)
                if todo is None:
                    break
                try:
                    with self._respond_lock:
                        if todo.responses is None:
                            todo.responses = self.respond(todo)
                except Exception as err:  # `next` samples it again and reports the error to the page
                    print(f"rlhf label: warning: sampling ahead failed: {err}", file=sys.stderr)
                    break

    # -- state, under self._lock
    def _is_ranked(self, item: Item) -> bool:
        return item.row in self._ranked_rows

    def _is_open(self, item: Item) -> bool:
        return item.row not in self._ranked_rows and item.row not in self.skipped and item.row not in self._writing

    def _is_free(self, row: int) -> bool:
        return row in self._by_row and self._is_open(self._by_row[row]) and row not in self._leases

    def _drop_lease(self, item: Item) -> None:
        """End ``item``'s lease (its token stays: until another tab leases it, its id still works)."""
        self._leases.pop(item.row, None)
        if item.owner is not None:
            self._owned.get(item.owner, set()).discard(item.row)
        item.owner = None
        if self._is_open(item):
            heapq.heappush(self._free, item.row)

    def _expire(self, now: float) -> None:
        """Leases whose time is up go back to the free prompts."""
        while self._expiry and self._expiry[0][0] <= now:
            expires, row, token = heapq.heappop(self._expiry)
            item = self._by_row[row]
            if row in self._leases and item.token == token and item.expires == expires:  # not renewed since
                self._drop_lease(item)

    def _take_free(self) -> Item | None:
        while self._free:
            row = heapq.heappop(self._free)
            if self._is_free(row):
                return self._by_row[row]
        return None

    def _peek_free(self, count: int) -> list[Item]:
        """The first ``count`` free prompts, left free."""
        rows: list[int] = []
        while self._free and len(rows) < count:
            row = heapq.heappop(self._free)
            if self._is_free(row) and row not in rows:
                rows.append(row)
        for row in rows:
            heapq.heappush(self._free, row)
        return [self._by_row[row] for row in rows]

    def _hold(self, item: Item, now: float) -> None:
        """(Re)start ``item``'s lease for the lease timeout."""
        item.expires = now + self.lease_timeout
        self._leases[item.row] = item
        if item.owner is not None:
            self._owned.setdefault(item.owner, set()).add(item.row)
        heapq.heappush(self._expiry, (item.expires, item.row, item.token))

    def _counts(self) -> dict[str, int]:
        self._expire(self.clock())
        return {"ranked": len(self._ranked_rows), "total": len(self.items), "skipped": len(self.skipped),
                "leased": len(self._leases)}

    def progress(self) -> dict[str, int]:
        with self._lock:
            return self._counts()

    def _find(self, item_id: Any) -> Item:
        unknown = LabelError(f"unknown id {shown(item_id)}: pass the id that /api/next returned")
        if not isinstance(item_id, str) or "-" not in item_id:
            raise unknown
        row_text, token = item_id.split("-", 1)
        item = self._by_row.get(int(row_text)) if row_text.isdigit() and len(row_text) < 19 else None
        if item is None or not token:
            raise unknown
        if self._is_ranked(item) or item.row in self._writing:
            raise LabelError(f"id {shown(item_id)}: this prompt is already ranked", status=409)
        if item.row in self.skipped:
            raise LabelError(f"id {shown(item_id)}: this prompt was skipped", status=409)
        if item.token != token:
            raise LabelError(
                f"id {shown(item_id)}: the lease on this prompt ran out and it went to another tab; fetch /api/next",
                status=409,
            )
        return item

    def _lease(self, client: str | None) -> Item | None:
        now = self.clock()
        self._expire(now)
        if client is not None and self._owned.get(client):  # the same tab asking again (a reload) keeps its prompt
            item = self._by_row[min(self._owned[client])]
            self._hold(item, now)
            return item
        item = self._take_free()
        if item is not None:
            item.token, item.owner = secrets.token_hex(6), client
            self._hold(item, now)
        return item

    # -- public operations
    def next(self, client: str | None = None) -> dict[str, Any]:
        """The next prompt for `client` with its responses, leased to it; or {"done": ...} when none is left."""
        with self._lock:
            item = self._lease(client)
            if item is None:
                waiting = len(self.items) - len(self._ranked_rows) - len(self.skipped)
                progress = self._counts()
        if item is None:
            if waiting:
                return {"done": False, "waiting": waiting, "progress": progress,
                        "message": f"the {waiting} prompt(s) left are open in other tabs; try again later"}
            return {"done": True, "progress": progress}
        token = item.token
        if item.responses is None:
            try:
                with self._respond_lock:  # the prefetcher may be sampling this very prompt: wait for it
                    if item.responses is None:
                        item.responses = self.respond(item)
            except Exception:
                with self._lock:
                    if item.token == token:
                        self._drop_lease(item)
                        item.token = None
                raise
        self._wake.set()
        return {"id": f"{item.row}-{token}", "prompt": item.prompt, "responses": list(item.responses),
                "progress": self.progress()}

    def rank(self, item_id: Any, order: Any) -> dict[str, Any]:
        """Record the ranking `order` (indices into the item's responses, best first): appended and fsync'ed."""
        with self._lock:
            item = self._find(item_id)
            if not item.responses:  # ids are handed out only with responses; this one was made up
                raise LabelError(f"id {shown(item_id)}: its responses are not sampled yet; fetch /api/next")
            n = len(item.responses)
            valid = (
                isinstance(order, list)
                and all(isinstance(i, int) and not isinstance(i, bool) for i in order)
                and sorted(order) == list(range(n))
            )
            if not valid:
                raise LabelError(
                    f"order {shown(order)} is not a ranking of the {n} responses: give each index 0..{n - 1} "
                    "exactly once, best first"
                )
            owner, token = item.owner, item.token
            self._writing.add(item.row)  # no other request takes it while the line is written
            self._drop_lease(item)
        try:  # the append and its fsync happen outside the lock: the other tabs are not held up
            self.file.append(item.prompt, [item.responses[i] for i in order])
        except BaseException:
            with self._lock:
                self._writing.discard(item.row)
                if item.token == token:  # still this tab's: its lease goes on
                    item.owner = owner
                    self._hold(item, self.clock())
            raise
        with self._lock:
            self._writing.discard(item.row)
            self._ranked_rows.add(item.row)
            item.token = None
        self._wake.set()
        return {"ok": True, "progress": self.progress()}

    def skip(self, item_id: Any) -> dict[str, Any]:
        """Do not serve this prompt again in this session (nothing is written; a restart serves it again)."""
        with self._lock:
            item = self._find(item_id)
            self.skipped.add(item.row)
            self._drop_lease(item)
            item.token = None
        self._wake.set()
        return {"ok": True, "progress": self.progress()}

    def renew(self, item_id: Any) -> None:
        """Extend the lease of an item being worked on (the page calls it on each click)."""
        with self._lock:
            try:
                item = self._find(item_id)
            except LabelError:
                return
            self._hold(item, self.clock())

    def release(self, client: str) -> None:
        """Free the leases of a closed tab."""
        with self._lock:
            for row in list(self._owned.pop(client, ())):
                item = self._by_row[row]
                self._drop_lease(item)
                item.token = None


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error names what came in, never all of it."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# ----------------------------------------------------------------------------------------------- data and model
def load_prompts(args: LabelArguments) -> tuple[list[Any], list[list[str]] | None]:
    """The prompts of the dataset and, when it has them, the responses to rank (else None: sample them)."""
    from rlhf.common.data import detect_format, load_dataset_dict, ranked_responses, validate_dataset

    if not args.dataset_name:
        raise UserError("--dataset_name is required: a .jsonl file of {prompt} rows (or {prompt, responses})")
    data = load_dataset_dict(args.dataset_name, args.dataset_config)
    if args.dataset_train_split not in data:
        raise UserError(
            f"--dataset_name {args.dataset_name} has no split '{args.dataset_train_split}'; available: {sorted(data)}"
        )
    dataset = data[args.dataset_train_split]
    try:
        fmt = detect_format(dataset.column_names, "reward")
    except ValueError:
        fmt = None
    try:
        validate_dataset(dataset, "reward" if fmt else "rl", name=f"dataset '{args.dataset_name}'")
    except ValueError as err:
        raise UserError(str(err)) from err
    prompts = list(dataset["prompt"])
    if fmt is None:
        return prompts, None
    from rlhf.common.data import response_text

    given = [[response_text(r) for r in ranked_responses(row, fmt)] for row in dataset]
    return prompts, given


def shuffled(responses: list[str], seed: int, row: int) -> list[str]:
    """Given responses in a seeded random order, so a best-first file is not shown best first."""
    order = list(responses)
    random.Random(f"{seed}-{row}").shuffle(order)
    return order


def model_responder(args: LabelArguments) -> Responder:
    """Sample K distinct responses per prompt from `args.model_name_or_path` (loaded once, here)."""
    import torch

    from rlhf.common.data import render_prompt
    from rlhf.common.models import load_causal_lm, load_tokenizer
    from rlhf.steps.evaluate import sample_completions

    tokenizer = load_tokenizer(args.model_name_or_path, revision=args.revision, trust_remote_code=args.trust_remote_code)
    model = load_causal_lm(
        args.model_name_or_path, tokenizer, revision=args.revision, trust_remote_code=args.trust_remote_code
    )
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    k = args.num_responses

    def respond(item: Item) -> list[str]:
        text = render_prompt(item.prompt, tokenizer)
        unique: list[str] = []
        # Identical responses cannot be ranked: draw again (new seeds) up to 3 times to fill K distinct ones.
        for attempt in range(4):
            seed = args.seed * 1_000_003 + item.row * 4 + attempt
            samples = sample_completions(model, tokenizer, [text] * k, args.max_new_tokens, args.temperature, seed=seed)
            unique += [c for c in dict.fromkeys(samples.completions) if c not in unique]
            if len(unique) >= k:
                return unique[:k]
        if len(unique) < 2:  # the model says one thing only: show the copies, the person can skip
            return samples.completions
        return unique

    return respond


# ----------------------------------------------------------------------------------------------- web
def import_gradio() -> Any:
    """gradio (the optional `label` extra), with its usage analytics off: a local labelling page calls nobody."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as err:
        raise UserError(INSTALL_HINT) from err
    return gradio


# The largest request body read: an API call is an id and at most 26 indices (a few hundred bytes); the
# page's own calls (gradio) carry the prompt and its responses back and forth.
MAX_API_BODY = 64 * 1024
MAX_PAGE_BODY = 4 * 1024 * 1024


class BodyLimit:
    """ASGI middleware: a request whose body is over the limit is answered 413 before it is read -- from
    its Content-Length, or, without one (chunked), as soon as the bytes received pass the limit -- so a
    huge body is never parsed (a 200 MB /api/rank once took 1.65 GB to refuse)."""

    def __init__(self, app: Any):
        self.app = app

    @staticmethod
    def limit(path: str) -> int:
        return MAX_API_BODY if path.startswith("/api/") else MAX_PAGE_BODY

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit(scope.get("path", ""))
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await self._refuse(send, limit, declared.decode("latin-1")[:20])
        received, started, refused = 0, False, False

        async def counted() -> dict:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if not started and not refused:  # answer now: FastAPI would make the abort a 400
                        refused = True
                        await self._refuse(send, limit, f"over {limit}")
                    raise _TooLarge
            return message

        async def sending(message: dict) -> None:
            nonlocal started
            if refused:
                return  # the app's own answer to the body it could not finish reading
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except _TooLarge:
            pass  # answered 413 in counted()

    @staticmethod
    async def _refuse(send: Callable, limit: int, size: str) -> None:
        body = json.dumps({"error": f"request body of {size} bytes is over the {limit}-byte limit"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def create_api(queue: LabelQueue) -> Any:
    """The FastAPI app with the JSON routes (the page is mounted on it by `create_app`); request bodies are
    capped (:class:`BodyLimit`)."""
    from fastapi import Body, FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI(title="rlhf label", docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit)

    def answer(call: Callable[[], dict[str, Any]]) -> Any:
        try:
            return call()
        except LabelError as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)

    def field_of(body: Any, name: str) -> Any:
        if not isinstance(body, dict) or name not in body:
            raise LabelError(f"the JSON body needs '{name}', got {shown(body)}")
        return body[name]

    @app.get("/api/next")
    def api_next(client: str | None = None) -> Any:
        return answer(lambda: queue.next(client))

    @app.post("/api/rank")
    def api_rank(body: Any = Body(None)) -> Any:
        return answer(lambda: queue.rank(field_of(body, "id"), field_of(body, "order")))

    @app.post("/api/skip")
    def api_skip(body: Any = Body(None)) -> Any:
        return answer(lambda: queue.skip(field_of(body, "id")))

    @app.get("/api/progress")
    def api_progress() -> Any:
        return queue.progress()

    return app


def prompt_display(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in prompt)


def progress_text(progress: dict[str, int]) -> str:
    text = f"**{progress['ranked']} / {progress['total']}** ranked"
    if progress["skipped"]:
        text += f" · {progress['skipped']} skipped"
    return text


KEYS_JS = """
<script>
// Keyboard shortcuts: 1-9 pick the next best response, Backspace undoes, Enter submits, S skips.
document.addEventListener("keydown", (event) => {
  const tag = (event.target.tagName || "").toLowerCase();
  if (tag === "input" || tag === "textarea" || event.ctrlKey || event.metaKey || event.altKey) return;
  const click = (id) => { const el = document.getElementById(id); if (el) { event.preventDefault(); el.click(); } };
  if (/^[1-9]$/.test(event.key)) click("pick-" + (Number(event.key) - 1));
  else if (event.key === "Enter") click("submit");
  else if (event.key === "Backspace") click("undo");
  else if (event.key === "s" || event.key === "S") click("skip");
});
</script>
"""

PAGE_CSS = """
.response textarea { font-size: 15px !important; }
.picked { border: 2px solid var(--color-accent) !important; }
#progress { text-align: right; font-size: 18px; }
"""


def create_page(queue: LabelQueue, slots: int) -> Any:
    """The gradio page: the prompt, up to `slots` responses with a pick button each, undo/reset/skip/submit."""
    gr = import_gradio()

    def view(current: dict | None, order: list[int]) -> list[Any]:
        """Every component's update for the state (current item, picks so far)."""
        progress = queue.progress()
        if current is None or "id" not in current:
            if current and current.get("waiting"):
                title = f"Waiting: {current['message']}. Reload the page later."
            else:
                title = "All prompts are ranked" if not progress["skipped"] else \
                    f"Done for now: {progress['skipped']} prompt(s) skipped (restart to see them again)"
            return [progress_text(progress), gr.update(value=title, label="Done")] + \
                [gr.update(visible=False)] * (2 * slots) + \
                ["", gr.update(interactive=False), gr.update(interactive=False), gr.update(interactive=False),
                 gr.update(interactive=False)]
        responses = current["responses"]
        texts, buttons = [], []
        for i in range(slots):
            if i >= len(responses):
                texts.append(gr.update(visible=False))
                buttons.append(gr.update(visible=False))
                continue
            place = order.index(i) + 1 if i in order else None
            label = f"Response {LETTERS[i]}" + (f" · ranked #{place}" if place else "")
            texts.append(gr.update(value=responses[i] or "(empty response)", label=label, visible=True,
                                   elem_classes=["response", "picked"] if place else ["response"]))
            buttons.append(gr.update(
                value=f"#{place}" if place else f"Pick {LETTERS[i]}  ({i + 1})",
                variant="primary" if place else "secondary", interactive=True, visible=True,
            ))
        summary = "Your ranking, best first: " + (" > ".join(LETTERS[i] for i in order) if order else
                                                   "click the best response first (or press its number)")
        complete = len(order) == len(responses)
        return [progress_text(progress), gr.update(value=prompt_display(current["prompt"]), label="Prompt"),
                *texts, *buttons, summary, gr.update(interactive=complete), gr.update(interactive=bool(order)),
                gr.update(interactive=bool(order)), gr.update(interactive=True)]

    def fetch(request: gr.Request) -> tuple[dict, list[int]]:
        return queue.next(client=getattr(request, "session_hash", None)), []

    def on_load(request: gr.Request) -> list[Any]:
        current, order = fetch(request)
        return [current, order, *view(current, order)]

    def on_pick(i: int, current: dict | None, order: list[int]) -> list[Any]:
        n = len(current["responses"]) if current and "id" in current else 0
        if i < n:
            if i in order:  # clicking a ranked response takes it, and those ranked after it, back out
                order = order[: order.index(i)]
            else:
                order = [*order, i]
                if len(order) == n - 1:  # the one left is the worst: no click needed
                    order += [j for j in range(n) if j not in order]
            queue.renew(current["id"])
        return [current, order, *view(current, order)]

    def on_undo(current: dict | None, order: list[int]) -> list[Any]:
        order = order[:-2] if current and len(order) == len(current.get("responses", [])) else order[:-1]
        return [current, order, *view(current, order)]

    def on_reset(current: dict | None, order: list[int]) -> list[Any]:
        return [current, [], *view(current, [])]

    def on_submit(current: dict | None, order: list[int], request: gr.Request) -> list[Any]:
        if current and "id" in current:
            try:
                queue.rank(current["id"], order)
            except LabelError as err:
                gr.Warning(str(err))
                if err.status == 400:  # e.g. not every response ranked yet: stay on this prompt
                    return [current, order, *view(current, order)]
        current, order = fetch(request)
        return [current, order, *view(current, order)]

    def on_skip(current: dict | None, order: list[int], request: gr.Request) -> list[Any]:
        if current and "id" in current:
            try:
                queue.skip(current["id"])
            except LabelError as err:
                gr.Warning(str(err))
        current, order = fetch(request)
        return [current, order, *view(current, order)]

    def on_unload(request: gr.Request) -> None:
        if getattr(request, "session_hash", None):
            queue.release(request.session_hash)

    # gradio injects the request by the parameter's annotation, which `from __future__ import annotations`
    # turns into a string it does not recognise: give it the class itself.
    for handler in (fetch, on_load, on_submit, on_skip, on_unload):
        handler.__annotations__["request"] = gr.Request

    with gr.Blocks(title="rlhf label") as page:
        current = gr.State(None)
        order = gr.State([])
        with gr.Row():
            gr.Markdown("## Rank the responses, best first")
            progress = gr.Markdown(elem_id="progress")
        prompt = gr.Textbox(label="Prompt", interactive=False, lines=1, max_lines=20, elem_id="prompt")
        texts, buttons = [], []
        with gr.Row(equal_height=True):
            for i in range(slots):
                with gr.Column(min_width=180):
                    texts.append(gr.Textbox(label=f"Response {LETTERS[i]}", interactive=False, lines=3, max_lines=30,
                                            elem_id=f"response-{i}", elem_classes=["response"]))
                    buttons.append(gr.Button(f"Pick {LETTERS[i]}  ({i + 1})", elem_id=f"pick-{i}"))
        summary = gr.Markdown(elem_id="summary")
        with gr.Row():
            undo = gr.Button("Undo (Backspace)", elem_id="undo")
            reset = gr.Button("Reset", elem_id="reset")
            skip = gr.Button("Skip (S)", elem_id="skip")
            submit = gr.Button("Submit ranking (Enter)", variant="primary", elem_id="submit")
        gr.Markdown("Click the responses from best to worst (or press 1-9); the last one is ranked worst by "
                    "itself. Click a ranked response to take it back. Each ranking is saved to disk before the "
                    "next prompt appears.")

        state = [current, order]
        outputs = [*state, progress, prompt, *texts, *buttons, summary, submit, undo, reset, skip]
        page.load(on_load, None, outputs)
        for i, button in enumerate(buttons):
            button.click(lambda c, o, i=i: on_pick(i, c, o), state, outputs)
        undo.click(on_undo, state, outputs)
        reset.click(on_reset, state, outputs)
        submit.click(on_submit, state, outputs)
        skip.click(on_skip, state, outputs)
        page.unload(on_unload)
    return page


def create_app(queue: LabelQueue, slots: int) -> Any:
    """The whole server: the JSON API with the page mounted at /."""
    gr = import_gradio()

    app = create_api(queue)
    page = create_page(queue, slots)
    return gr.mount_gradio_app(app, page, path="/", head=KEYS_JS, css=PAGE_CSS, footer_links=[]), page


def build(args: LabelArguments) -> tuple[LabelQueue, int]:
    """Check the flags, read the prompts, load the model if responses must be sampled, open the output file."""
    if not args.output_file:
        raise UserError("--output_file is required: the .jsonl file the rankings are appended to")
    if Path(args.output_file).expanduser().is_dir():
        raise UserError(f"--output_file {args.output_file} is a folder; give a .jsonl file path")
    if args.num_responses < 2:
        raise UserError(f"--num_responses {args.num_responses}: a ranking needs at least 2 responses")
    if args.num_responses > len(LETTERS):
        raise UserError(f"--num_responses {args.num_responses}: at most {len(LETTERS)} responses fit on the page")
    if args.lease_timeout <= 0:
        raise UserError(f"--lease_timeout {args.lease_timeout}: must be positive (seconds)")
    prompts, given = load_prompts(args)
    if given is not None:
        slots = max(len(r) for r in given)
        if slots > len(LETTERS):
            raise UserError(f"--dataset_name {args.dataset_name}: a row has {slots} responses; at most {len(LETTERS)} fit")
        given = [shuffled(r, args.seed, row) for row, r in enumerate(given)]

        def respond(item: Item) -> list[str]:  # never called: the responses are given
            raise AssertionError("given responses are set on every item")
    else:
        if not args.model_name_or_path:
            raise UserError(
                f"--model_name_or_path is required: dataset '{args.dataset_name}' has prompts only, so responses "
                "are sampled from a model (or give rows with `responses`)"
            )
        slots = args.num_responses
        respond = model_responder(args)
    # Opened last (it is created if missing), so a bad dataset or model leaves no empty file behind.
    queue = LabelQueue(prompts, RankingFile(args.output_file), respond, args.lease_timeout, given)
    return queue, slots


def serve(app: Any, host: str, port: int) -> Any:
    """A uvicorn server for `app` (not started); `.run()` blocks until Ctrl-C."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from rlhf.common.utils import parse_args

    (args,) = parse_args([LabelArguments], argv, description=__doc__.split("\n\n")[0])
    import_gradio()
    queue, slots = build(args)
    queue.start_prefetch()
    app, page = create_app(queue, slots)
    server = serve(app, args.host, args.port)
    progress = queue.progress()
    print(f"rlhf label: {progress['ranked']} / {progress['total']} prompts already ranked in {queue.file.path}"
          + (f" ({queue.duplicates} repeated prompts served once)" if queue.duplicates else ""), file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"rlhf label: warning: --host {args.host} lets other machines on your network open the page",
              file=sys.stderr)
    url_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host

    def announce() -> None:
        while not server.started:
            time.sleep(0.1)
        port = server.servers[0].sockets[0].getsockname()[1]
        print(f"rlhf label: open http://{url_host}:{port}/ to rank (Ctrl-C to stop; every ranking is already saved)",
              file=sys.stderr)
        if args.share:
            from gradio import networking

            try:
                url = networking.setup_tunnel(url_host, port, page.share_token, None, None)
            except Exception as err:  # no network, or the share service is down: the local page still works
                print(f"rlhf label: warning: no share link ({err}); the page is still at http://{url_host}:{port}/",
                      file=sys.stderr)
                return
            print(f"rlhf label: public share link (anyone with it can rank): {url}", file=sys.stderr)

    threading.Thread(target=announce, daemon=True).start()
    try:
        server.run()
    finally:
        queue.close()
    progress = queue.progress()
    print(f"rlhf label: {progress['ranked']} / {progress['total']} prompts ranked, saved in {queue.file.path}; "
          f"next: rlhf reward --dataset_name {queue.file.path} ...", file=sys.stderr)
    return progress
