"""Which registries the webhook acts for, and where it fetches their images from.

A webhook payload names its registry (`request.host`, a Harbor resource URL), but that is
the caller's claim: fetching from it would let anyone holding the token make the service
connect to any host. So the operator's configuration is the allowlist, and the only source
of addresses:

    --registry-url URL          events naming URL's host[:port] are acted on; images are
                                fetched from URL and published under that host[:port]
    --registry-url NAME=URL     events naming NAME (host[:port], as the registry calls itself
                                in its events) are fetched from URL, published under NAME
    --wishlist FILE             events for the images the DUCC wishlist lists (its tag
                                globs match) are fetched from the registry the wishlist names

URL is `https://host[:port]`, `http://host[:port]` or a bare `host[:port]` (https, or
http for loopback hosts, as for `ingest`). An event for anything else is ignored (logged,
counted as ignored in the HTTP answer) and never fetched: `resolve` raises
RegistryNotAllowedError, and the fetch reference is built from the configured URL only.
Names compare as host[:port] in lower case, Docker Hub's aliases as one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pycvmfs.errors import ConfigError, ImageError
from pycvmfs.images.reference import ImageReference, parse_reference
from pycvmfs.images.webhook_payload import ImageEvent

if TYPE_CHECKING:
    from pycvmfs.images.wishlist import Wishlist

SCHEMES = ("https", "http", "docker")


class RegistryNotAllowedError(ImageError):
    """An event for a registry or image the operator did not configure."""


def registry_name(host: str) -> str:
    """`host[:port]` as images are published under it: lower case, Docker Hub's aliases
    as one; ImageError for anything that is not a registry host."""
    text = host.strip()
    if not text or any(ch in text for ch in "/@?#") or any(ch.isspace() for ch in text):
        raise ImageError(f"{host!r} is not a registry host[:port]")
    reference = parse_reference(f"docker://{text}/a/b")
    if reference.repository != "a/b":  # Docker's rule took it for a repository
        raise ImageError(f"{host!r} is not a registry host (a registry host has a '.' or a "
                         "':port', or is localhost)")
    return reference.registry.lower()


@dataclass(frozen=True, slots=True)
class RegistrySource:
    """A configured registry: events naming `name` are fetched from `url`."""

    name: str  # host[:port], normalised: what images are published under
    url: str  # scheme://host[:port], scheme https|http|docker (docker: the client picks)

    def __str__(self) -> str:
        return self.name if self.url == f"docker://{self.name}" else f"{self.name}={self.url}"


def parse_registry_option(text: str) -> RegistrySource:
    """`URL` or `NAME=URL` (module docstring); ConfigError naming the problem."""
    name_text, sep, url_text = text.partition("=")
    if not sep:
        name_text, url_text = "", text
    where = f"--registry-url {text!r}"
    url_text = url_text.strip()
    if not url_text:
        raise ConfigError(f"{where}: no URL (expected URL or NAME=URL, e.g. "
                          "https://registry.example.org)")
    scheme, netloc = _split_url(url_text, where)
    try:
        host = registry_name(netloc)
        name = registry_name(name_text.strip()) if sep else host
    except ImageError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return RegistrySource(name, f"{scheme}://{netloc}")


def _split_url(text: str, where: str) -> tuple[str, str]:
    try:
        parts = urlsplit(text if "://" in text else f"docker://{text}")
        parts.port  # noqa: B018  # raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"{where}: not a URL: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise ConfigError(f"{where}: scheme {parts.scheme!r} (use https://, http:// or a bare "
                          "host[:port])")
    if not parts.hostname:
        raise ConfigError(f"{where}: names no host")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{where}: credentials do not belong in the URL (use --username and "
                          "PYCVMFS_REGISTRY_PASSWORD)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{where}: give the registry's scheme://host[:port] only, no path, "
                          "query or fragment")
    return parts.scheme, parts.netloc


@dataclass(frozen=True, slots=True)
class RegistryAllowlist:
    """The operator's registries (`registries`) and wished images (`images`, from a
    wishlist); `resolve` says where to fetch an event's image from, or refuses it."""

    registries: tuple[RegistrySource, ...] = ()
    images: tuple[ImageReference, ...] = ()

    @classmethod
    def build(cls, registry_options: Iterable[str] = (),
              wishlist: Wishlist | None = None) -> RegistryAllowlist:
        sources: dict[str, RegistrySource] = {}
        for text in registry_options:
            source = parse_registry_option(text)
            known = sources.get(source.name)
            if known is not None and known != source:
                raise ConfigError(f"--registry-url: {source.name} is configured twice, as "
                                  f"{known.url} and {source.url}; keep one")
            sources[source.name] = source
        images = tuple(item.reference for item in wishlist.inputs) if wishlist else ()
        return cls(tuple(sources.values()), images)

    @property
    def empty(self) -> bool:
        return not self.registries and not self.images

    def describe(self) -> str:
        parts = [str(source) for source in self.registries]
        if self.images:
            parts.append(f"{len(self.images)} wishlist images")
        return ", ".join(parts) or "nothing"

    def resolve(self, event: ImageEvent) -> RegistrySource:
        """The configured source of `event`'s image; RegistryNotAllowedError otherwise."""
        try:
            name = registry_name(event.registry)
        except ImageError as exc:
            raise RegistryNotAllowedError(f"{event}: {exc}") from None
        for source in self.registries:
            if source.name == name:
                return source
        for image in self.images:
            if registry_name(image.registry) == name and _wished(image, event):
                return RegistrySource(name, f"{image.scheme or 'docker'}://{image.registry}")
        if any(registry_name(image.registry) == name for image in self.images):
            raise RegistryNotAllowedError(f"{event}: not an image the wishlist lists; ignored")
        raise RegistryNotAllowedError(
            f"{event}: registry {name!r} is not configured (configured: {self.describe()}; "
            "add --registry-url to act on it); ignored, nothing fetched")

    def admit(self, event: ImageEvent) -> ImageEvent:
        """`event` under its configured registry name (RegistryNotAllowedError if none)."""
        source = self.resolve(event)
        if source.name == event.registry:
            return event
        return ImageEvent(event.action, source.name, event.repository, event.tag,
                          event.digest)


def _wished(image: ImageReference, event: ImageEvent) -> bool:
    """Whether a wishlist entry covers the event: same repository; the tag matches the
    entry's tag (glob) when the event names one; the digest agrees when both name one."""
    if image.repository != event.repository:
        return False
    if image.digest is not None and event.digest is not None and image.digest != event.digest:
        return False
    if event.tag is None:
        return True  # a delete by manifest digest: any wished tag of the repository
    if image.tag is None:  # pinned by digest only
        return image.digest is not None and image.digest == event.digest
    return image.matches(event.tag)
