"""A minimal OpenAI-compatible chat server on 127.0.0.1 for the `openai` editor's tests.

With a model folder it really generates with a local transformers model, so the HTTP path
(ray.data.llm HttpRequestProcessorConfig, retries, response parsing) runs against real generations.
With `respond`, a function of the request body, it answers what the test scripts instead: a
completion text, or a raw `(status, content type, body bytes)` reply such as an HTTP error, an
HTML error page or a body that is not JSON. Every request body is recorded in `bodies`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Reply = tuple[int, str, bytes]  # status, content type, body
Respond = Callable[[dict], str | Reply]


def completion(text: str, model: str | None = None) -> Reply:
    payload = {"id": "cmpl-test", "object": "chat.completion", "model": model,
               "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]}
    return 200, "application/json", json.dumps(payload).encode()


class ChatServer:
    def __init__(self, model_dir: str | None = None, respond: Respond | None = None) -> None:
        if (model_dir is None) == (respond is None):
            raise ValueError("give a model folder or a respond function")
        self.respond = respond
        if model_dir is not None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
            self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.lock = threading.Lock()
        self.requests = 0
        self.bodies: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self.send_response(404)
                    self.end_headers()
                    return
                status, content_type, payload = server.reply(body)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def reply(self, body: dict) -> Reply:
        with self.lock:
            self.requests += 1
            self.bodies.append(body)
        if self.respond is None:
            return completion(self.generate(body), body.get("model"))
        out = self.respond(body)
        return completion(out, body.get("model")) if isinstance(out, str) else out

    def generate(self, body: dict) -> str:
        import torch

        prompt = self.tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        with self.lock, torch.no_grad():
            torch.manual_seed(int(body.get("seed", 0)))
            out = self.model.generate(ids, max_new_tokens=int(body.get("max_tokens", 16)), do_sample=True,
                                      temperature=max(float(body.get("temperature", 1.0)), 1e-3),
                                      pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
