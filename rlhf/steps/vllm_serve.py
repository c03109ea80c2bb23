"""`rlhf vllm-serve`: a vLLM engine for `--use_vllm --vllm_mode server` (the role of `trl vllm-serve`).

    rlhf vllm-serve --model SFT [--host 127.0.0.1] [--port 8000] [--gpu_memory_utilization 0.9] [--dtype auto]

Start it first (on its own GPU, or the CPU), then the training run with the same host and port. It serves
one engine to every rank of the job, over HTTP (JSON; the weights as one safetensors body, so it needs no
NCCL and runs on the CPU too). Its endpoints, one per line.

    GET  /health/          {"status": "ok"}
    GET  /info/            the model, dtype and logprobs mode
    POST /generate/        {"prompt_ids", "seeds", "temperature", "max_tokens", "stop_token_ids"}
                           -> {"completion_ids", "logprobs"}
    POST /update_weights/  safetensors bytes: the policy's full weights, loaded in place (prefix cache reset)

It listens on 127.0.0.1 unless --host says otherwise: the endpoints take weights from anyone who can reach
them. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from rlhf.common.errors import ConfigError, EngineError

__all__ = ["main", "make_server"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rlhf vllm-serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the policy's starting checkpoint (the trainer's --model_name_or_path)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--gpu_memory_utilization", type=float, default=0.9,
                        help="fraction of the GPU's memory for the engine (vLLM's CPU build: of the machine's memory)")
    parser.add_argument("--dtype", default="auto", help="the engine's dtype: auto, float32, bfloat16, float16")
    parser.add_argument("--max_model_len", type=int, default=None)
    parser.add_argument("--enforce_eager", type=lambda v: v.lower() in ("1", "true", "yes"), default=None,
                        help="no compiled graphs (default: eager on the CPU, compiled on a GPU)")
    parser.add_argument("--enable_prefix_caching", type=lambda v: v.lower() in ("1", "true", "yes"), default=True)
    parser.add_argument("--trust_remote_code", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0.0 < args.gpu_memory_utilization <= 1.0:
        raise ConfigError(f"--gpu_memory_utilization must lie in (0, 1], got {args.gpu_memory_utilization}")
    if not 0 <= args.port < 65536:
        raise ConfigError(f"--port must lie in [0, 65535], got {args.port}")
    return args


def make_server(engine, host: str, port: int, info: dict) -> ThreadingHTTPServer:
    """An HTTP server around ``engine`` (a :class:`rlhf.rl.vllm_engine.LocalEngine`); one request at a time
    reaches the engine (its ``generate`` is not re-entrant)."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002 - one line per weight update is enough
            pass

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def do_GET(self):  # noqa: N802 - http.server's name
            if self.path.rstrip("/") == "/health":
                return self._reply(200, {"status": "ok"})
            if self.path.rstrip("/") == "/info":
                return self._reply(200, info)
            return self._reply(404, {"error": f"no such endpoint {self.path}"})

        def do_POST(self):  # noqa: N802
            path = self.path.rstrip("/")
            try:
                if path == "/generate":
                    request = json.loads(self._body())
                    with lock:
                        results = engine.generate(request["prompt_ids"], request["seeds"], float(request["temperature"]),
                                                  int(request["max_tokens"]), request.get("stop_token_ids") or ())
                    return self._reply(200, {"completion_ids": [r.token_ids for r in results],
                                             "logprobs": [r.logprobs for r in results]})
                if path == "/update_weights":
                    from safetensors.torch import load

                    weights = load(self._body())
                    with lock:
                        engine.load_weights(weights)
                    return self._reply(200, {"success": True, "num_tensors": len(weights)})
                return self._reply(404, {"error": f"no such endpoint {self.path}"})
            except (KeyError, ValueError, TypeError) as err:
                return self._reply(400, {"error": f"bad request: {err}"})
            except EngineError as err:
                return self._reply(500, {"error": str(err)})

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> None:
    """`rlhf vllm-serve` entry point."""

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(["--help" if a == "--help-all" else a for a in argv])  # every flag is in --help
    from rlhf.rl.vllm_engine import EngineOptions, LocalEngine

    engine = LocalEngine(EngineOptions(
        model=args.model, dtype=args.dtype, seed=args.seed, gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len, enforce_eager=args.enforce_eager,
        enable_prefix_caching=args.enable_prefix_caching, trust_remote_code=args.trust_remote_code,
    ))
    try:
        server = make_server(engine, args.host, args.port,
                             {"model": args.model, "dtype": args.dtype, "logprobs_mode": "processed_logprobs"})
    except OSError as err:
        engine.close()
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from None
    print(f"rlhf vllm-serve: {args.model} on http://{args.host}:{server.server_address[1]} (Ctrl-C stops it)",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        engine.close()


if __name__ == "__main__":
    main()
