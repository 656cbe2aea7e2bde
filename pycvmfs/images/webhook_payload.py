"""Webhook payloads: Docker registry notification envelopes and Harbor events -> ImageEvents.

Pure (no I/O). Payloads (fact sheet 14.5):
- Docker registry notifications (`application/vnd.docker.distribution.events.v1+json`):
  `{"events": [{"action": "push"|"delete"|..., "target": {"mediaType", "repository",
  "tag", "digest", "url"}, "request": {"host"}}]}`. Only manifest pushes with a tag count
  (blob pushes, pulls, mounts and untagged manifest pushes are ignored and logged); a
  delete names a tag or only the manifest digest.
- Harbor: `{"type": "PUSH_ARTIFACT"|"DELETE_ARTIFACT", "event_data": {"resources":
  [{"resource_url": "host/project/repo:tag", "tag", "digest"}], "repository": {...}}}`.

An event's `registry` is the host the payload names (`request.host`, the resource URL's
host). It is a claim, not an address: the service acts only on events whose registry the
operator configured and fetches from the configured URL (webhook_registries.py).

The body comes from the network: anything that is not JSON, JSON nested deeper than the
parser's recursion limit, or an envelope of more than MAX_EVENTS_PER_PAYLOAD entries is a
PayloadError (the HTTP front answers 400 with its message).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pycvmfs.errors import ImageError
from pycvmfs.images.manifest import INDEX_TYPES, MANIFEST_TYPES
from pycvmfs.images.reference import ImageReference, parse_reference

DOCKER_EVENTS_TYPE = "application/vnd.docker.distribution.events.v1+json"
# a registry batches a handful of events per request (distribution's default is one per
# envelope, Harbor sends one artifact set); more is not a registry talking
MAX_EVENTS_PER_PAYLOAD = 1000
MANIFEST_MEDIA_TYPES = MANIFEST_TYPES | INDEX_TYPES | frozenset({
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws"})

MAX_REASON_CHARS = 300

Action = Literal["push", "delete"]


class PayloadError(ImageError):
    """A request body that is not a webhook payload we understand."""


@dataclass(frozen=True, slots=True)
class ImageEvent:
    """One thing to do: push (ingest) or delete (remove) an image of `registry`."""

    action: Action
    registry: str  # host[:port] as the payload names it (the configured name once admitted)
    repository: str
    tag: str | None = None
    digest: str | None = None

    def reference(self) -> ImageReference:
        text = f"docker://{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return parse_reference(text)

    @property
    def subject(self) -> str:
        """`registry/repository` (the queue keeps the order of events of one image)."""
        return f"{self.registry}/{self.repository}"

    @property
    def public_name(self) -> str:
        """`<registry>/<repository>:<tag>` (tagged events only)."""
        if not self.tag:
            raise ImageError(f"{self}: no tag")
        return parse_reference(f"docker://{self.registry}/{self.repository}:{self.tag}"
                               ).public_path()

    def to_json(self) -> str:
        return json.dumps({"action": self.action, "registry": self.registry,
                           "repository": self.repository, "tag": self.tag,
                           "digest": self.digest}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ImageEvent:
        data = json.loads(text)
        action = data["action"]
        if action not in ("push", "delete"):
            raise PayloadError(f"unknown action {action!r}")
        return cls(action, data["registry"], data["repository"], data.get("tag"),
                   data.get("digest"))

    def __str__(self) -> str:
        name = f"{self.registry}/{self.repository}"
        if self.tag:
            name += f":{self.tag}"
        if self.digest:
            name += f"@{self.digest}"
        return f"{self.action} {name}"


@dataclass(frozen=True, slots=True)
class ParsedPayload:
    events: list[ImageEvent]
    ignored: list[str]  # why each ignored entry was ignored


def parse_payload(body: bytes) -> ParsedPayload:
    """A Docker registry notification envelope or a Harbor event (told apart by shape)."""
    try:
        document = json.loads(body)
    except RecursionError:
        raise PayloadError("the JSON body is nested too deeply (a webhook payload is a few "
                           "levels deep)") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, over-long integers
        raise PayloadError(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise PayloadError("the payload must be a JSON object")
    if "events" in document:
        return parse_docker_envelope(document)
    if "type" in document:
        return parse_harbor_event(document)
    raise PayloadError("neither a Docker registry envelope ('events') nor a Harbor event "
                       "('type')")


def _check_count(entries: list[Any], what: str) -> None:
    if len(entries) > MAX_EVENTS_PER_PAYLOAD:
        raise PayloadError(f"{what} lists {len(entries)} entries; at most "
                           f"{MAX_EVENTS_PER_PAYLOAD} are accepted per request")


def parse_docker_envelope(document: Mapping[str, Any]) -> ParsedPayload:
    entries = document.get("events")
    if not isinstance(entries, list):
        raise PayloadError("'events' must be a list")
    _check_count(entries, "'events'")
    events: list[ImageEvent] = []
    ignored: list[str] = []
    for index, entry in enumerate(entries):
        try:
            event = _docker_event(entry)
        except (PayloadError, ImageError) as exc:
            ignored.append(_cut(f"events[{index}]: {exc}"))
            continue
        if isinstance(event, str):
            ignored.append(_cut(f"events[{index}]: {event}"))
        else:
            events.append(event)
    return ParsedPayload(events, ignored)


def _docker_event(entry: Any) -> ImageEvent | str:
    if not isinstance(entry, dict):
        raise PayloadError("not an object")
    action = entry.get("action")
    target = entry.get("target")
    if not isinstance(target, dict):
        raise PayloadError("no 'target'")
    if action not in ("push", "delete"):
        return f"action {action!r} ignored"
    repository = _str_field(target, "repository", required=True)
    tag = _str_field(target, "tag")
    digest = _str_field(target, "digest")
    media_type = _str_field(target, "mediaType")
    host = _event_host(entry, target)
    if action == "push":
        if media_type not in MANIFEST_MEDIA_TYPES:
            return f"push of {media_type or 'an unknown type'} (not a manifest) ignored"
        if not tag:
            return f"untagged manifest push {repository}@{digest} ignored"
    elif not tag and not digest:
        return "delete names neither tag nor digest"
    elif media_type and media_type not in MANIFEST_MEDIA_TYPES:
        return f"delete of {media_type} (not a manifest) ignored"
    event = ImageEvent(action, host, repository, tag or None, digest or None)
    event.reference()  # validates every part
    return event


def _event_host(entry: Mapping[str, Any], target: Mapping[str, Any]) -> str:
    request = entry.get("request")
    if isinstance(request, dict):
        host = request.get("host")
        if isinstance(host, str) and host:
            return host
    url = target.get("url")
    if isinstance(url, str) and url:
        try:
            netloc = urlsplit(url).netloc
        except ValueError:
            netloc = ""
        if netloc:
            return netloc
    raise PayloadError("no registry host (request.host, target.url)")


def parse_harbor_event(document: Mapping[str, Any]) -> ParsedPayload:
    kind = document.get("type")
    actions: dict[Any, Action] = {"PUSH_ARTIFACT": "push", "DELETE_ARTIFACT": "delete"}
    if not isinstance(kind, str) or kind not in actions:
        return ParsedPayload([], [_cut(f"Harbor event type {kind!r} ignored")])
    action = actions[kind]
    data = document.get("event_data")
    if not isinstance(data, dict):
        raise PayloadError("Harbor event without 'event_data'")
    resources = data.get("resources")
    if not isinstance(resources, list):
        raise PayloadError("Harbor event without 'event_data.resources'")
    _check_count(resources, "'event_data.resources'")
    repo_info = data.get("repository") if isinstance(data.get("repository"), dict) else {}
    events: list[ImageEvent] = []
    ignored: list[str] = []
    for index, resource in enumerate(resources):
        where = f"resources[{index}]"
        try:
            if not isinstance(resource, dict):
                raise PayloadError("not an object")
            url = _str_field(resource, "resource_url", required=True)
            reference = parse_reference(url if "://" in url else f"docker://{url}")
            tag = _str_field(resource, "tag") or None
            digest = _str_field(resource, "digest") or reference.digest
            name_part = url.rsplit("/", 1)[-1].split("@", 1)[0]
            # parse_reference says `latest` when the URL names no tag: not a tag push
            explicit_tag = reference.tag if ":" in name_part else tag
            repository = reference.repository
            full = repo_info.get("repo_full_name") if isinstance(repo_info, dict) else None
            if isinstance(full, str) and full and full != repository:
                ignored.append(_cut(f"{where}: repository {repository!r} differs from "
                                    f"event_data.repository {full!r}; using the resource URL"))
            if action == "push" and not explicit_tag:
                ignored.append(_cut(f"{where}: untagged push {url} ignored"))
                continue
            if action == "delete" and not explicit_tag and not digest:
                ignored.append(f"{where}: delete names neither tag nor digest")
                continue
            event = ImageEvent(action, reference.registry, repository, explicit_tag, digest)
            event.reference()
            events.append(event)
        except (PayloadError, ImageError) as exc:
            ignored.append(_cut(f"{where}: {exc}"))
    return ParsedPayload(events, ignored)


def _str_field(mapping: Mapping[str, Any], name: str, *, required: bool = False) -> str:
    value = mapping.get(name)
    if value is None or value == "":
        if required:
            raise PayloadError(f"missing {name!r}")
        return ""
    if not isinstance(value, str):
        raise PayloadError(f"{name!r} must be a string")
    return value


def _cut(text: str) -> str:
    """A reason as logged and answered, at most MAX_REASON_CHARS long: reasons quote the
    caller's strings, which must not come back whole."""
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS] + "..."
