"""A small stand-in for the Kubernetes API server, for driving the real KubeSpawner.

No API server can run on these machines, so the tests point KubeSpawner's real client
(kubernetes_asyncio, through a kubeconfig) at this HTTP server on 127.0.0.1. It serves the calls
KubeSpawner and casa_hub make (pods, secrets, events: create, read, patch, delete, list and watch),
records every request with its JSON body exactly as the client sent it, and plays a minimal
kubelet: a created pod is scheduled, its Secret volumes and ``secretKeyRef`` env vars are
resolved from the stored Secrets (waiting, with a ``FailedMount`` event, while a Secret is
missing), and it then runs. Deleting a pod garbage-collects the Secrets it owns, unless ``gc``
is switched off. ``fail`` makes the next matching call answer with an error.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tornado import httpserver, web
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets

KINDS = {"pods": "Pod", "secrets": "Secret", "events": "Event"}


@dataclass
class Request:
    method: str
    kind: str  # pods, secrets, events
    namespace: str
    name: str | None
    query: dict[str, str]
    body: Any
    content_type: str


@dataclass
class Failure:
    method: str
    kind: str
    status: int
    message: str
    times: int = 1


@dataclass
class Mounted:
    """What the kubelet made of a pod: the files its notebook container sees and its env."""

    files: dict[str, bytes] = field(default_factory=dict)  # path in the container -> content
    env: dict[str, str] = field(default_factory=dict)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _merge(target: dict, patch: dict) -> dict:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif key == "ownerReferences" and isinstance(value, list):
            by_uid = {r["uid"]: r for r in target.get(key, [])}
            by_uid.update({r["uid"]: r for r in value})
            target[key] = list(by_uid.values())
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


class FakeKubeAPI:
    def __init__(self, node_ip: str = "10.0.0.7") -> None:
        self.objects: dict[tuple[str, str, str], dict] = {}  # (kind, namespace, name) -> object
        self.history: list[tuple[int, str, str, str, dict]] = []  # rv, kind, ns, type, object
        self.requests: list[Request] = []
        self.failures: list[Failure] = []
        self.mounted: dict[str, Mounted] = {}  # pod name -> what its container sees
        self.kubelet_errors: list[str] = []
        self.gc = True
        self.closing = False
        self.node_ip = node_ip
        self.rv = 1
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self.server: httpserver.HTTPServer | None = None
        self.url = ""

    # ---- control ---------------------------------------------------------------------------------

    def start(self) -> str:
        app = web.Application([
            (r"/api/v1/namespaces/([^/]+)/(pods|secrets|events)", _Collection, {"api": self}),
            (r"/api/v1/namespaces/([^/]+)/(pods|secrets|events)/([^/]+)", _Item, {"api": self}),
        ])
        sockets = bind_sockets(0, "127.0.0.1")
        self.server = httpserver.HTTPServer(app)
        self.server.add_sockets(sockets)
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        return self.url

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.closing = True
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()  # open watches end now
        if self.server is not None:
            self.server.stop()
            await asyncio.sleep(0.1)
            await self.server.close_all_connections()

    def write_kubeconfig(self, path: Path) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "hub", "user": {"token": "fake-service-account"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "hub",
                                                       "namespace": "casa"}}],
        }))
        return path

    def fail(self, method: str, kind: str, status: int, message: str, times: int = 1) -> None:
        self.failures.append(Failure(method, kind, status, message, times))

    def reset(self) -> None:
        self.requests.clear()
        self.failures.clear()
        self.kubelet_errors.clear()
        self.gc = True

    def get(self, kind: str, name: str, namespace: str = "casa") -> dict | None:
        return self.objects.get((kind, namespace, name))

    def names(self, kind: str) -> list[str]:
        return sorted(name for (k, _, name) in self.objects if k == kind)

    def sent(self, method: str, kind: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.kind == kind]

    # ---- state changes ---------------------------------------------------------------------------

    def _emit(self, kind: str, ns: str, change: str, obj: dict) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.history.append((self.rv, kind, ns, change, copy.deepcopy(obj)))
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def put(self, kind: str, ns: str, obj: dict) -> dict:
        meta = obj.setdefault("metadata", {})
        meta.update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=_now())
        obj.setdefault("apiVersion", "v1")
        obj.setdefault("kind", KINDS[kind])
        self.objects[(kind, ns, meta["name"])] = obj
        self._emit(kind, ns, "ADDED", obj)
        return obj

    def delete(self, kind: str, ns: str, name: str) -> dict | None:
        obj = self.objects.pop((kind, ns, name), None)
        if obj is None:
            return None
        self._emit(kind, ns, "DELETED", obj)
        if kind == "pods" and self.gc:
            uid = obj["metadata"]["uid"]
            for (k, n, sname), other in list(self.objects.items()):
                if n == ns and any(r.get("uid") == uid for r in other["metadata"].get("ownerReferences", [])):
                    self.delete(k, n, sname)
        return obj

    def event(self, ns: str, pod: dict, reason: str, message: str, kind: str = "Normal") -> None:
        self.put("events", ns, {
            "metadata": {"name": f"{pod['metadata']['name']}.{uuid.uuid4().hex[:12]}"},
            "involvedObject": {"kind": "Pod", "name": pod["metadata"]["name"], "namespace": ns,
                               "uid": pod["metadata"]["uid"]},
            "reason": reason, "message": message, "type": kind,
            "lastTimestamp": _now(), "eventTime": None,
        })

    def spawn_kubelet(self, ns: str, name: str) -> None:
        task = asyncio.ensure_future(self._kubelet(ns, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _kubelet(self, ns: str, name: str) -> None:
        pod = self.get("pods", name, ns)
        self.event(ns, pod, "Scheduled", f"Successfully assigned {ns}/{name} to casa-node-1")
        warned = False
        for _ in range(200):
            await asyncio.sleep(0.02)
            if self.get("pods", name, ns) is not pod:
                return  # deleted meanwhile
            missing, mounted = self._resolve(ns, pod)
            if mounted is not None:
                break
            if not warned:
                self.event(ns, pod, "FailedMount", missing, "Warning")
                warned = True
        else:
            self.kubelet_errors.append(f"{name}: {missing}")
            return
        self.mounted[name] = mounted
        for reason, message in (("Pulled", "Container image already present on machine"),
                                ("Created", "Created container notebook"),
                                ("Started", "Started container notebook")):
            self.event(ns, pod, reason, message)
        pod["status"] = {
            "phase": "Running", "podIP": self.node_ip, "startTime": _now(),
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": c["name"], "ready": True, "restartCount": 0,
                                   "image": c.get("image", ""), "imageID": "", "state": {"running": {}}}
                                  for c in pod["spec"]["containers"]],
        }
        self._emit("pods", ns, "MODIFIED", pod)

    def _resolve(self, ns: str, pod: dict) -> tuple[str, Mounted | None]:
        """The kubelet's view: volumes and env of the first container, or what is missing."""
        container = pod["spec"]["containers"][0]
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        out = Mounted()
        for mount in container.get("volumeMounts", []):
            source = volumes[mount["name"]].get("secret")
            if source is None:
                continue
            secret = self.get("secrets", source["secretName"], ns)
            if secret is None:
                return (f'MountVolume.SetUp failed for volume "{mount["name"]}" : '
                        f'secret "{source["secretName"]}" not found'), None
            data = secret.get("data", {})
            items = source.get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                if item["key"] not in data:
                    return f'couldn\'t find key {item["key"]} in Secret {ns}/{source["secretName"]}', None
                out.files[f'{mount["mountPath"]}/{item["path"]}'] = base64.b64decode(data[item["key"]])
        for var in container.get("env", []):
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            if ref is None:
                out.env[var["name"]] = var.get("value", "")
                continue
            secret = self.get("secrets", ref["name"], ns)
            if secret is None or ref["key"] not in secret.get("data", {}):
                return f'secret "{ref["name"]}" or its key {ref["key"]} not found', None
            out.env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        return "", out


class _Base(web.RequestHandler):
    def initialize(self, api: FakeKubeAPI) -> None:
        self.api = api

    def check_xsrf_cookie(self) -> None:  # an API server, not a web form
        pass

    def record(self, kind: str, ns: str, name: str | None) -> Request:
        body = json.loads(self.request.body) if self.request.body else None
        query = {k: v[-1].decode() for k, v in self.request.query_arguments.items()}
        req = Request(self.request.method, kind, ns, name, query, body,
                      self.request.headers.get("Content-Type", ""))
        self.api.requests.append(req)
        return req

    def injected_failure(self, kind: str) -> bool:
        for f in self.api.failures:
            if f.method == self.request.method and f.kind == kind and f.times > 0:
                f.times -= 1
                self.status(f.status, f.message)
                return True
        return False

    def status(self, code: int, message: str, reason: str = "") -> None:
        reasons = {403: "Forbidden", 404: "NotFound", 409: "AlreadyExists", 422: "Invalid",
                   500: "InternalError"}
        self.set_status(code)
        self.set_header("Content-Type", "application/json")
        self.finish({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                     "message": message, "reason": reason or reasons.get(code, ""), "code": code})

    def send(self, obj: dict, code: int = 200) -> None:
        self.set_status(code)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(obj))


class _Collection(_Base):
    async def get(self, ns: str, kind: str) -> None:
        req = self.record(kind, ns, None)
        if req.query.get("watch", "").lower() in ("true", "1"):
            await self.watch(ns, kind, int(req.query.get("resourceVersion") or 0),
                             min(5, int(req.query.get("timeoutSeconds") or 5)),
                             req.query.get("labelSelector", ""))
            return
        items = [o for (k, n, _), o in self.api.objects.items()
                 if k == kind and n == ns and _labels_match(o, req.query.get("labelSelector", ""))]
        self.send({"kind": f"{KINDS[kind]}List", "apiVersion": "v1",
                   "metadata": {"resourceVersion": str(self.api.rv)}, "items": items})

    async def watch(self, ns: str, kind: str, since: int, timeout: int, selector: str) -> None:
        self.set_header("Content-Type", "application/json")
        deadline = time.monotonic() + timeout
        try:
            while True:
                changed = self.api._changed
                for rv, k, n, change, obj in list(self.api.history):
                    if rv > since and k == kind and n == ns and _labels_match(obj, selector):
                        self.write(json.dumps({"type": change, "object": obj}) + "\n")
                        since = rv
                await self.flush()
                left = deadline - time.monotonic()
                if left <= 0 or self.api.closing:
                    break
                try:
                    await asyncio.wait_for(changed.wait(), left)
                except TimeoutError:
                    break
            self.finish()
        except (StreamClosedError, web.HTTPError, RuntimeError):
            pass  # the client went away (a reflector stopped) or the server is closing

    def post(self, ns: str, kind: str) -> None:
        req = self.record(kind, ns, None)
        if self.injected_failure(kind):
            return
        name = req.body["metadata"]["name"]
        if (kind, ns, name) in self.api.objects:
            self.status(409, f'{kind} "{name}" already exists')
            return
        obj = copy.deepcopy(req.body)
        if kind == "pods":
            obj["status"] = {"phase": "Pending"}
        self.api.put(kind, ns, obj)
        if kind == "pods":
            self.api.spawn_kubelet(ns, name)
        self.send(obj, 201)


class _Item(_Base):
    def get(self, ns: str, kind: str, name: str) -> None:
        self.record(kind, ns, name)
        if self.injected_failure(kind):
            return
        obj = self.api.get(kind, name, ns)
        if obj is None:
            self.status(404, f'{kind} "{name}" not found')
        else:
            self.send(obj)

    def patch(self, ns: str, kind: str, name: str) -> None:
        req = self.record(kind, ns, name)
        if self.injected_failure(kind):
            return
        obj = self.api.get(kind, name, ns)
        if obj is None:
            self.status(404, f'{kind} "{name}" not found')
            return
        _merge(obj, req.body)
        self.api._emit(kind, ns, "MODIFIED", obj)
        self.send(obj)

    def delete(self, ns: str, kind: str, name: str) -> None:
        self.record(kind, ns, name)
        if self.injected_failure(kind):
            return
        obj = self.api.delete(kind, ns, name)
        if obj is None:
            self.status(404, f'{kind} "{name}" not found')
        else:
            self.send({"kind": "Status", "apiVersion": "v1", "status": "Success",
                       "details": {"name": name, "kind": kind}})


def _labels_match(obj: dict, selector: str) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True
