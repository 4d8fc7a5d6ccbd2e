"""Globus Transfer at its HTTP edge, for tests: each collection is a local directory.

`TransferService` registers `responses` callbacks for the Transfer API calls the
globus-transfer mover makes, so a real `globus_sdk.TransferClient` sends real
HTTP requests and gets the documents the service would send back, their bodies
starting from globus-sdk's own recorded fixtures (`globus_sdk.testing`). A
submitted task copies between the directories that stand for its collections
once it has been polled `polls_until_done` times; a rename renames. Requests
without one of the accepted bearer tokens get Transfer's 401, so token refresh
is exercised for real.
"""

from __future__ import annotations

import copy
import filecmp
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import responses
from globus_sdk.testing import get_response_set

TRANSFER_API = "https://transfer.api.globus.org/v0.10"
Reply = tuple[int, dict[str, str], str]


def recorded(set_id: str, case: str = "default") -> Any:
    """A deep copy of the JSON body globus-sdk recorded for `set_id` (e.g. ``transfer.operation_stat``)."""
    return copy.deepcopy(get_response_set(set_id).lookup(case).json)


def task_document(**fields: Any) -> dict[str, Any]:
    """A Transfer task document: globus-sdk's recorded one, with `fields` changed."""
    document = recorded("transfer.task_list")["DATA"][0]
    document["DATA_TYPE"] = "task"
    document.update(fields)
    return document


@dataclass
class Task:
    document: dict[str, Any]
    request: dict[str, Any]
    polls_left: int
    events: list[dict[str, Any]] = field(default_factory=list)


class TransferService:
    def __init__(
        self,
        mock: responses.RequestsMock,
        collections: dict[str, Path],
        *,
        tokens: tuple[str, ...] = ("test-token",),
        polls_until_done: int = 1,
    ):
        self.collections = collections
        self.tokens = set(tokens)
        self.polls_until_done = polls_until_done
        self.tasks: dict[str, Task] = {}
        self.submitted: list[dict[str, Any]] = []  # transfer documents, as received
        self.renamed: list[tuple[str, str, str]] = []  # (collection, old path, new path)
        self.authorizations: list[str] = []  # the Authorization header of every request
        routes = [
            ("GET", r"/submission_id", self._submission_id),
            ("POST", r"/transfer", self._submit),
            ("GET", r"/task/(?P<task>[0-9a-f-]+)", self._task),
            ("GET", r"/task/(?P<task>[0-9a-f-]+)/event_list", self._events),
            ("POST", r"/task/(?P<task>[0-9a-f-]+)/cancel", self._cancel),
            ("GET", r"/operation/endpoint/(?P<collection>[0-9a-f-]+)/stat", self._stat),
            ("POST", r"/operation/endpoint/(?P<collection>[0-9a-f-]+)/rename", self._rename),
        ]
        for method, path, handler in routes:
            pattern = re.compile(re.escape(TRANSFER_API) + path + r"(\?.*)?$")
            mock.add_callback(method, pattern, callback=self._authorized(pattern, handler),
                              content_type="application/json")

    def local(self, collection: str, path: str) -> Path:
        """The local file behind `path` on `collection`."""
        return self.collections[collection] / path.lstrip("/")

    # --- plumbing --------------------------------------------------------------------------------

    def _authorized(self, pattern: re.Pattern[str], handler: Any) -> Any:
        def answer(request: Any) -> Reply:
            header = request.headers.get("Authorization", "")
            self.authorizations.append(header)
            if header.removeprefix("Bearer ") not in self.tokens:
                return _reply(401, {"code": "AuthenticationFailed", "message": "Token is not active",
                                    "request_id": "edge401", "resource": urlparse(request.url).path})
            match = pattern.match(request.url)
            assert match is not None
            return handler(request, **match.groupdict())

        return answer

    # --- task submission and monitoring ----------------------------------------------------------

    def _submission_id(self, request: Any) -> Reply:
        return _reply(200, {**recorded("transfer.get_submission_id"), "value": str(uuid.uuid4())})

    def _submit(self, request: Any) -> Reply:
        document = json.loads(request.body)
        self.submitted.append(document)
        task_id = str(uuid.uuid4())
        self.tasks[task_id] = Task(
            task_document(
                task_id=task_id, status="ACTIVE", nice_status="Queued", label=document.get("label"),
                source_endpoint_id=document["source_endpoint"],
                destination_endpoint_id=document["destination_endpoint"],
                sync_level=document.get("sync_level"), verify_checksum=document.get("verify_checksum", False),
                completion_time=None, bytes_transferred=0, files_transferred=0,
            ),
            document,
            self.polls_until_done,
        )
        body = recorded("transfer.submit_transfer")
        body.update(task_id=task_id, submission_id=document["submission_id"])
        return _reply(202, body)

    def _task(self, request: Any, task: str) -> Reply:
        record = self.tasks[task]
        if record.document["status"] == "ACTIVE":
            record.polls_left -= 1
            if record.polls_left <= 0:
                self._run(record)
        return _reply(200, record.document)

    def _events(self, request: Any, task: str) -> Reply:
        events = list(reversed(self.tasks[task].events))  # newest first
        return _reply(200, {"DATA": events, "DATA_TYPE": "event_list", "length": len(events), "limit": 10,
                            "offset": 0, "total": len(events)})

    def _cancel(self, request: Any, task: str) -> Reply:
        self.tasks[task].document.update(status="FAILED", nice_status=None)
        return _reply(200, recorded("transfer.cancel_task"))

    def _run(self, record: Task) -> None:
        """Do what the task asks, all at once: copy each item, mirroring directories as the options say."""
        request, copied = record.request, 0
        for item in request["DATA"]:
            source = self.local(request["source_endpoint"], item["source_path"])
            dest = self.local(request["destination_endpoint"], item["destination_path"])
            if not source.exists():
                record.events.append({"DATA_TYPE": "event", "code": "FILE_NOT_FOUND", "is_error": True,
                                      "description": "file not found", "details": f"{item['source_path']} not found",
                                      "time": "2026-01-01 00:00:00+00:00"})
                record.document.update(status="FAILED", nice_status="FILE_NOT_FOUND",
                                       fatal_error={"code": "FILE_NOT_FOUND", "description": "file not found"})
                return
            if item.get("recursive"):
                copied += _mirror(source, dest, delete_extra=bool(request.get("delete_destination_extra")))
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, dest)
                copied += dest.stat().st_size
        record.document.update(status="SUCCEEDED", nice_status=None, bytes_transferred=copied,
                               completion_time="2026-01-01 00:00:01+00:00")

    # --- file operations -------------------------------------------------------------------------

    def _stat(self, request: Any, collection: str) -> Reply:
        path = parse_qs(urlparse(request.url).query)["path"][0]
        local = self.local(collection, path)
        if not local.exists():
            return _reply(404, recorded("transfer.operation_stat", "not_found"))
        body = recorded("transfer.operation_stat")
        body.update(name=local.name, type="dir" if local.is_dir() else "file", size=local.stat().st_size)
        return _reply(200, body)

    def _rename(self, request: Any, collection: str) -> Reply:
        document = json.loads(request.body)
        old, new = self.local(collection, document["old_path"]), self.local(collection, document["new_path"])
        if not old.exists():
            return _reply(404, recorded("transfer.operation_stat", "not_found"))
        if new.exists():
            return _reply(409, {"code": "Exists", "message": f"{document['new_path']} exists",
                                "request_id": "edge409", "resource": urlparse(request.url).path})
        os.rename(old, new)
        self.renamed.append((collection, document["old_path"], document["new_path"]))
        return _reply(200, recorded("transfer.operation_rename"))


def _mirror(source: Path, dest: Path, *, delete_extra: bool) -> int:
    """Make `dest` hold `source`'s files, sending only those that differ; return the bytes sent."""
    dest.mkdir(parents=True, exist_ok=True)
    sent = 0
    for entry in source.iterdir():
        target = dest / entry.name
        if entry.is_dir():
            sent += _mirror(entry, target, delete_extra=delete_extra)
        elif not (target.is_file() and filecmp.cmp(entry, target, shallow=False)):
            shutil.copyfile(entry, target)
            sent += target.stat().st_size
    if delete_extra:
        for extra in {p.name for p in dest.iterdir()} - {p.name for p in source.iterdir()}:
            shutil.rmtree(dest / extra) if (dest / extra).is_dir() else (dest / extra).unlink()
    return sent


def _reply(status: int, body: Any) -> Reply:
    return status, {"Content-Type": "application/json"}, json.dumps(body)
