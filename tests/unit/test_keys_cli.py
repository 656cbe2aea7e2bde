"""Key files on disk (`pycvmfs.publisher.keys`) and the `pycvmfs keys create` command."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from pycvmfs.cli.keys import COMMANDS, keys
from pycvmfs.errors import ConfigError
from pycvmfs.format.certificates import (
    certificate_fingerprint,
    certificate_pem,
    create_certificate,
    fingerprint_text,
    generate_private_key,
    private_key_pem,
)
from pycvmfs.format.hashes import ContentHash
from pycvmfs.format.manifest import Manifest, sign_manifest, verify_manifest
from pycvmfs.format.whitelist import (
    check_certificate_listed,
    make_whitelist,
    sign_whitelist,
    verify_whitelist,
)
from pycvmfs.publisher.keys import KeyPaths, create_keys, load_keys
from tests.fixtures_path import ORACLE_KEYS, requires_fixtures

FQRN = "keys.test"
NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def created(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated key set shared by the read-only tests (RSA generation is slow)."""
    keys_dir = tmp_path_factory.mktemp("keys") / "etc-cvmfs-keys"
    create_keys(FQRN, keys_dir)
    return keys_dir


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_create_writes_four_files(created: Path) -> None:
    paths = KeyPaths.of(FQRN, created)
    assert sorted(p.name for p in created.iterdir()) == sorted(p.name for p in paths.all())
    assert paths.master_key.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert paths.signing_key.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert paths.public_key.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert paths.certificate.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert _mode(paths.master_key) == 0o400
    assert _mode(paths.signing_key) == 0o600
    assert _mode(paths.public_key) == 0o644


def test_created_keys_load_and_work_together(created: Path) -> None:
    loaded = load_keys(FQRN, created)
    assert loaded.master_key is not None
    assert loaded.master_key.key_size == 2048 and loaded.signing_key.key_size == 2048
    assert loaded.certificate_pem == (created / f"{FQRN}.crt").read_bytes()
    manifest = Manifest(root_hash=ContentHash.parse("a" * 40), revision=1, fqrn=FQRN,
                        timestamp=1)
    assert verify_manifest(sign_manifest(manifest, loaded.signing_key), loaded.certificate,
                           fqrn=FQRN) == manifest
    whitelist = make_whitelist(FQRN, [certificate_fingerprint(loaded.certificate)], now=NOW)
    raw = sign_whitelist(whitelist, loaded.master_key)
    verified = verify_whitelist(raw, [loaded.public_key], fqrn=FQRN, now=NOW)
    check_certificate_listed(verified, loaded.certificate)


def test_refuses_to_overwrite(created: Path) -> None:
    before = (created / f"{FQRN}.masterkey").read_bytes()
    with pytest.raises(ConfigError, match="already exist.*--force"):
        create_keys(FQRN, created)
    assert (created / f"{FQRN}.masterkey").read_bytes() == before


def test_force_replaces_keys(tmp_path: Path) -> None:
    create_keys(FQRN, tmp_path)
    before = (tmp_path / f"{FQRN}.masterkey").read_bytes()
    create_keys(FQRN, tmp_path, force=True)  # the old master key is read-only: still replaced
    assert (tmp_path / f"{FQRN}.masterkey").read_bytes() != before
    load_keys(FQRN, tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


def test_a_single_existing_file_blocks_creation(tmp_path: Path) -> None:
    (tmp_path / f"{FQRN}.crt").write_bytes(b"old")
    with pytest.raises(ConfigError, match=f"{FQRN}.crt"):
        create_keys(FQRN, tmp_path)


@pytest.mark.parametrize("fqrn", ["", "../etc", "a b", "x/y", ".hidden"])
def test_invalid_repository_names(tmp_path: Path, fqrn: str) -> None:
    with pytest.raises(ConfigError, match="invalid repository name"):
        create_keys(fqrn, tmp_path)


def test_load_names_the_missing_file(created: Path, tmp_path: Path) -> None:
    for name in (f"{FQRN}.pub", f"{FQRN}.key", f"{FQRN}.crt"):
        (tmp_path / name).write_bytes((created / name).read_bytes())
    (tmp_path / f"{FQRN}.key").unlink()
    with pytest.raises(ConfigError, match=f"missing key file .*{FQRN}.key"):
        load_keys(FQRN, tmp_path)


def test_master_key_is_optional(created: Path, tmp_path: Path) -> None:
    for name in (f"{FQRN}.pub", f"{FQRN}.key", f"{FQRN}.crt"):
        (tmp_path / name).write_bytes((created / name).read_bytes())
    assert load_keys(FQRN, tmp_path).master_key is None


def test_mismatched_certificate_is_refused(created: Path, tmp_path: Path) -> None:
    for name in (f"{FQRN}.pub", f"{FQRN}.key", f"{FQRN}.masterkey"):
        (tmp_path / name).write_bytes((created / name).read_bytes())
    other = generate_private_key(1024)
    (tmp_path / f"{FQRN}.crt").write_bytes(certificate_pem(create_certificate(FQRN, other)))
    with pytest.raises(ConfigError, match="does not belong"):
        load_keys(FQRN, tmp_path)


def test_mismatched_master_key_is_refused(created: Path, tmp_path: Path) -> None:
    for name in (f"{FQRN}.pub", f"{FQRN}.key", f"{FQRN}.crt"):
        (tmp_path / name).write_bytes((created / name).read_bytes())
    (tmp_path / f"{FQRN}.masterkey").write_bytes(private_key_pem(generate_private_key(1024)))
    with pytest.raises(ConfigError, match="masterkey"):
        load_keys(FQRN, tmp_path)


def test_unreadable_certificate_is_a_config_error(created: Path, tmp_path: Path) -> None:
    for name in (f"{FQRN}.pub", f"{FQRN}.key"):
        (tmp_path / name).write_bytes((created / name).read_bytes())
    (tmp_path / f"{FQRN}.crt").write_bytes(b"not a certificate")
    with pytest.raises(ConfigError, match=f"{FQRN}.crt"):
        load_keys(FQRN, tmp_path)


@requires_fixtures
def test_load_reference_keys() -> None:
    """The reference publisher's files (PKCS#8 private keys) load as well."""
    loaded = load_keys("oracle.local", ORACLE_KEYS)
    assert fingerprint_text(certificate_fingerprint(loaded.certificate)).startswith("68:56:52")
    assert loaded.master_key is not None


# --- CLI ------------------------------------------------------------------------------------


def test_cli_is_registered() -> None:
    assert COMMANDS == [keys]


def test_cli_create(tmp_path: Path) -> None:
    runner = CliRunner()
    keys_dir = tmp_path / "keys"
    result = runner.invoke(keys, ["create", "cli.test", "--keys-dir", str(keys_dir)])
    assert result.exit_code == 0, result.output
    for suffix in ("masterkey", "pub", "key", "crt"):
        assert f"wrote {keys_dir / f'cli.test.{suffix}'}" in result.output
    fingerprint = fingerprint_text(certificate_fingerprint(load_keys("cli.test", keys_dir)
                                                           .certificate))
    assert f"certificate fingerprint {fingerprint}" in result.output

    again = runner.invoke(keys, ["create", "cli.test", "--keys-dir", str(keys_dir)])
    assert again.exit_code != 0
    assert isinstance(again.exception, ConfigError)
    assert "already exist" in str(again.exception)

    forced = runner.invoke(keys, ["create", "cli.test", "--keys-dir", str(keys_dir), "--force"])
    assert forced.exit_code == 0, forced.output
    assert fingerprint not in forced.output  # a new certificate


def test_cli_help() -> None:
    result = CliRunner().invoke(keys, ["create", "--help"])
    assert result.exit_code == 0
    assert "--keys-dir" in result.output and "--force" in result.output


def test_cli_create_needs_a_keys_dir() -> None:
    """Never a silent write into /etc/cvmfs/keys: the directory must be named."""
    result = CliRunner().invoke(keys, ["create", "cli.test"])
    assert result.exit_code == 2
    assert "Missing option '--keys-dir'" in result.output
