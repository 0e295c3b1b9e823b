"""CertWatcher: accepted rotations, refused half-written updates, the injected clock, the polling task."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime, timedelta, timezone

import pytest
from tls_support import craft, issue_to, new_ca

from meshproxy.config.security import Tls
from meshproxy.tls import ca as calib
from meshproxy.tls.certs import load_material
from meshproxy.tls.rotation import CertWatcher, expiry_timestamp

OLD = "spiffe://cluster.local/ns/shop/sa/cart"
NEW = "spiffe://cluster.local/ns/shop/sa/cart-v2"


@pytest.fixture(scope="module")
def ca():
    return new_ca()


class Recorder:
    def __init__(self):
        self.changes = []
        self.errors = []

    def on_change(self, m):
        self.changes.append(m)

    def on_error(self, msg):
        self.errors.append(msg)


def _replace(path, data: bytes):
    """Like a CSI driver / the CLI: a new file renamed over the old one."""
    calib.write_atomic(path, data, 0o600)


def _watch(cfg, rec, **kw):
    w = CertWatcher(cfg, rec.on_change, rec.on_error, **kw)
    return w, w.load()


def test_unchanged_files_do_nothing(tmp_path, ca):
    cfg = issue_to(tmp_path, ca, OLD)
    rec = Recorder()
    w, m = _watch(cfg, rec)
    assert m.spiffe_id == OLD and w.current is m
    assert w.check_now() is None and w.check_now() is None
    assert rec.changes == rec.errors == []


def test_replaced_files_are_picked_up(tmp_path, ca):
    cfg = issue_to(tmp_path, ca, OLD)
    rec = Recorder()
    w, old = _watch(cfg, rec)
    issue_to(tmp_path, ca, NEW)
    new = w.check_now()
    assert new is not None and new.spiffe_id == NEW
    assert [m.spiffe_id for m in rec.changes] == [NEW] and rec.errors == []
    assert w.current is new and new.fingerprint != old.fingerprint
    assert w.check_now() is None  # once


def test_mismatched_key_keeps_the_old_material(tmp_path, ca):
    cfg = issue_to(tmp_path, ca, OLD)
    rec = Recorder()
    w, old = _watch(cfg, rec)
    nxt = ca.issue(NEW, timedelta(hours=1))
    _replace(cfg.key_file, calib.key_pem(nxt.key))  # mid-update: the new key, the old certificate
    assert w.check_now() is None
    assert rec.changes == [] and len(rec.errors) == 1
    assert "key does not match the certificate" in rec.errors[0] and cfg.key_file in rec.errors[0]
    assert w.current is old
    assert w.check_now() is None and len(rec.errors) == 1  # reported once per state, not every poll
    _replace(cfg.cert_file, calib.cert_pem(nxt.cert))  # the rest of the update lands
    new = w.check_now()
    assert new is not None and new.spiffe_id == NEW and rec.changes == [new] and len(rec.errors) == 1


def _secret_volume_update(mount, ca, spiffe_id, version: int):
    """What kubelet does to a mounted Secret (AtomicWriter): the files go into a new hidden
    timestamped directory, a ``..data_tmp`` symlink to it is renamed over ``..data``, and the
    visible names are symlinks through ``..data``; the old directory is then removed."""
    leaf = ca.issue(spiffe_id, timedelta(hours=1))
    stamped = f"..2026_12_03_16_00_00.{version}"
    files = {"tls.crt": calib.cert_pem(leaf.cert), "tls.key": calib.key_pem(leaf.key),
             "ca.crt": calib.cert_pem(ca.cert)}
    os.mkdir(mount / stamped)
    for name, data in files.items():
        (mount / stamped / name).write_bytes(data)
    old = os.readlink(mount / "..data") if (mount / "..data").is_symlink() else None
    os.symlink(stamped, mount / "..data_tmp")
    os.rename(mount / "..data_tmp", mount / "..data")
    for name in files:
        if not (mount / name).is_symlink():
            os.symlink(f"..data/{name}", mount / name)
    if old is not None:
        for name in files:
            os.unlink(mount / old / name)
        os.rmdir(mount / old)
    return Tls(cert_file=str(mount / "tls.crt"), key_file=str(mount / "tls.key"),
               bundle_file=str(mount / "ca.crt"))


def test_a_kubernetes_secret_volume_swap_is_picked_up(tmp_path, ca):
    cfg = _secret_volume_update(tmp_path, ca, OLD, 1)
    rec = Recorder()
    w, old = _watch(cfg, rec)
    assert old.spiffe_id == OLD
    assert w.check_now() is None
    _secret_volume_update(tmp_path, ca, NEW, 2)  # the same paths, now through the new ..data
    new = w.check_now()
    assert new is not None and new.spiffe_id == NEW and rec.changes == [new] and rec.errors == []
    assert w.check_now() is None


def test_partially_written_certificate_is_refused(tmp_path, ca):
    cfg = issue_to(tmp_path, ca, OLD)
    rec = Recorder()
    w, old = _watch(cfg, rec)
    with open(cfg.cert_file, "rb") as f:
        data = f.read()
    with open(cfg.cert_file, "wb") as f:  # truncated in place
        f.write(data[: len(data) // 2])
    assert w.check_now() is None and w.current is old and len(rec.errors) == 1


def test_missing_file_is_an_error_then_recovers(tmp_path, ca):
    cfg = issue_to(tmp_path, ca, OLD)
    rec = Recorder()
    w, old = _watch(cfg, rec)
    os.unlink(cfg.bundle_file)
    assert w.check_now() is None and "not found" in rec.errors[0]
    _replace(cfg.bundle_file, calib.cert_pem(ca.cert))
    assert w.check_now() is None  # same material as before: no change to announce
    assert w.current is old and rec.changes == [] and len(rec.errors) == 1


def test_touched_files_with_the_same_content_are_not_a_change(tmp_path, ca):
    cfg = issue_to(tmp_path, ca, OLD)
    rec = Recorder()
    w, _ = _watch(cfg, rec)
    for p in (cfg.cert_file, cfg.key_file, cfg.bundle_file):
        with open(p, "rb") as f:
            _replace(p, f.read())
    assert w.check_now() is None and rec.changes == rec.errors == []


def test_not_yet_valid_is_retried_as_the_clock_moves(tmp_path, ca):
    cfg = issue_to(tmp_path, ca, OLD)
    rec = Recorder()
    start = datetime.now(timezone.utc)  # not the module's NOW: the session may be minutes old by now
    now = [start.timestamp()]
    w, old = _watch(cfg, rec, clock=lambda: now[0])
    cert, key = craft(ca.cert, ca.key, uris=[NEW], not_before=start + timedelta(minutes=10),
                      not_after=start + timedelta(hours=1))
    _replace(cfg.key_file, calib.key_pem(key))
    _replace(cfg.cert_file, calib.cert_pem(cert))
    assert w.check_now() is None and "not yet valid" in rec.errors[-1]
    now[0] += 11 * 60  # no file changed, but time passed
    new = w.check_now()
    assert new is not None and new.spiffe_id == NEW and len(rec.errors) == 1


def test_watcher_without_initial_material_reports_the_first_change(tmp_path, ca):
    cfg = issue_to(tmp_path, ca, OLD)
    rec = Recorder()
    w = CertWatcher(cfg, rec.on_change, rec.on_error)  # net/mesh.py style: loaded elsewhere
    assert w.check_now() is None
    issue_to(tmp_path, ca, NEW)
    assert w.check_now().spiffe_id == NEW


def test_expiry_timestamp(tmp_path, ca):
    cfg = issue_to(tmp_path, ca, OLD, ttl=timedelta(hours=2))
    m = load_material(cfg)
    assert expiry_timestamp(m) == m.not_after.timestamp()
    assert abs(expiry_timestamp(m) - (time.time() + 7200)) < 120


async def test_polling_task_rotates_and_stops(tmp_path, ca):
    cfg = issue_to(tmp_path, ca, OLD, interval=0.05)
    got: asyncio.Queue = asyncio.Queue()
    errors = []
    w = CertWatcher(cfg, got.put_nowait, errors.append)
    w.load()
    w.start()
    w.start()  # idempotent
    try:
        issue_to(tmp_path, ca, NEW, interval=0.05)
        m = await asyncio.wait_for(got.get(), 5)
        assert m.spiffe_id == NEW
    finally:
        w.stop()
        w.stop()
    issue_to(tmp_path, ca, OLD, interval=0.05)
    await asyncio.sleep(0.2)
    assert got.empty() and w.current.spiffe_id == NEW  # stopped: no more polling


async def test_a_failing_callback_does_not_stop_the_watcher(tmp_path, ca):
    cfg = issue_to(tmp_path, ca, OLD, interval=0.05)
    calls = []

    def on_change(m):
        calls.append(m.spiffe_id)
        if len(calls) == 1:
            raise RuntimeError("boom")

    w = CertWatcher(cfg, on_change, lambda msg: None)
    w.load()
    w.start()
    try:
        issue_to(tmp_path, ca, NEW, interval=0.05)
        for _ in range(100):
            if calls:
                break
            await asyncio.sleep(0.02)
        issue_to(tmp_path, ca, OLD, interval=0.05)
        for _ in range(100):
            if len(calls) == 2:
                break
            await asyncio.sleep(0.02)
    finally:
        w.stop()
    assert calls == [NEW, OLD]
