"""A local stand-in for the Hugging Face Hub's HTTP API, enough for `huggingface_hub`'s real client to create a
repo, validate a model card's YAML, upload a folder (regular, non-LFS uploads) and download files at a commit.

Tests point `HF_ENDPOINT` at it, so `zoo publish --push-to-hub` and `zoo download` run the client's own code
over real HTTP with no network. It keeps every commit's files and the README.md bodies it validated.

    with FakeHub() as hub:          # hub.endpoint = "http://127.0.0.1:<port>"
        ... HF_ENDPOINT=hub.endpoint ...
        hub.commits["org/policy"][oid]   # {path: bytes}
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import json
import re
import threading

import yaml

# The subset of the Hub's license ids this project writes, and the rules the Hub applies to them.
LICENSES = {"apache-2.0", "mit", "cc-by-4.0", "other"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def card_errors(content: str) -> list[str]:
    """What the Hub would refuse in a README.md's YAML front matter (the rules we rely on)."""
    if not content.startswith("---\n"):
        return ["no YAML front matter"]
    meta = yaml.safe_load(content[4:content.index("\n---", 4)])
    if not isinstance(meta, dict):
        return ["the front matter is not a mapping"]
    errors = []
    lic = meta.get("license")
    if lic not in LICENSES:
        errors.append(f"license {lic!r} is not a known license id")
    if lic == "other" and not (meta.get("license_name") or meta.get("license_link")):
        errors.append("license 'other' needs license_name or license_link")
    if "base_model" in meta and not _REPO_ID.match(str(meta["base_model"])):
        errors.append(f"base_model {meta['base_model']!r} is not a model id")
    if not isinstance(meta.get("tags", []), list) or not isinstance(meta.get("library_name", ""), str):
        errors.append("tags must be a list and library_name a string")
    return errors


class FakeHub:
    def __init__(self):
        self.commits: dict[str, dict[str, dict[str, bytes]]] = {}
        self.validated: list[str] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _body(self) -> bytes:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                return gzip.decompress(data) if self.headers.get("Content-Encoding") == "gzip" else data

            def _send(self, code: int, body: bytes = b"", headers=(), ctype="application/json"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, code: int, obj) -> None:
                self._send(code, json.dumps(obj).encode())

            def do_POST(self):
                body, path = self._body(), self.path.split("?")[0]
                if path == "/api/repos/create":
                    req = json.loads(body)
                    repo = f"{req['organization']}/{req['name']}"
                    hub.commits.setdefault(repo, {})
                    return self._json(200, {"url": f"{hub.endpoint}/{repo}"})
                if path == "/api/validate-yaml":
                    content = json.loads(body)["content"]
                    hub.validated.append(content)
                    errors = card_errors(content)
                    return self._json(400 if errors else 200, {"errors": [{"message": e} for e in errors]})
                m = re.match(r"^/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/]+)$", path)
                if m and m.group(2) == "preupload":
                    files = json.loads(body)["files"]
                    return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False} for f in files]})
                if m:
                    files = {}
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    oid = hashlib.sha1(body).hexdigest()
                    hub.commits.setdefault(m.group(1), {})[oid] = files
                    return self._json(200, {"commitUrl": f"{hub.endpoint}/{m.group(1)}/commit/{oid}", "commitOid": oid})
                return self._json(404, {"error": f"no route {path}"})

            def do_GET(self):
                m = re.match(r"^/([^/]+/[^/]+)/resolve/([0-9a-f]{40})/(.+)$", self.path.split("?")[0])
                data = hub.commits.get(m.group(1), {}).get(m.group(2), {}).get(m.group(3)) if m else None
                if data is None:
                    return self._send(404, b'{"error": "not found"}',
                                      headers=[("X-Error-Code", "EntryNotFound")] if m else [])
                etag = '"' + hashlib.sha256(data).hexdigest() + '"'
                self._send(200, data, headers=[("X-Repo-Commit", m.group(2)), ("ETag", etag)],
                           ctype="application/octet-stream")

            do_HEAD = do_GET

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
