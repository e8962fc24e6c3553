"""The canvas's pure parts: what an upload is (canvas.images), its settings (canvas.settings) and its tokens
(canvas.auth, against a real JWKS endpoint on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import io
import random
import struct
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey
from PIL import Image

from canvas.auth import JwksCache, KeysNeedFetch, Unauthorized, Verifier, bearer_token
from canvas.images import BadImage, NotAnImage, Stored, StripStream, check, inspect, sniff, strip
from canvas.settings import Settings
from canvas.strip_steps import ADAM7, OUT_BLOCK, Out
from core.contract import SettingError
from tests.test_canvas_support import HS_SECRET, AuthServer, auth_server, hs_token, jpeg_with_gps, png_bytes, token

__all__ = ["auth_server"]  # the fixture, imported for this module

GPS_IFD = 0x8825


def write(tmp_path: Path, data: bytes, name: str = "in") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_the_canvas_error_is_the_shared_one() -> None:
    """Handlers anywhere in the service raise the one ApiError the app turns into its JSON answer."""
    import canvas.errors
    import core.errors

    assert canvas.errors.ApiError is core.errors.ApiError
    missing = canvas.errors.not_found("upload")
    assert (missing.status, missing.code, missing.message) == (404, "not_found", "no such upload")


def test_types_come_from_the_bytes() -> None:
    assert sniff(png_bytes()[:16]) == "image/png"
    assert sniff(jpeg_with_gps()[:16]) == "image/jpeg"
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="WEBP")
    assert sniff(out.getvalue()[:16]) == "image/webp"
    for data in (b"GIF89a....", b"%PDF-1.7", b"", b"RIFF\x00\x00\x00\x00WAVE"):
        with pytest.raises(NotAnImage):
            sniff(data)


def test_jpeg_loses_gps_and_maker_but_keeps_orientation_and_pixels(tmp_path: Path) -> None:
    src = write(tmp_path, jpeg_with_gps(orientation=6))
    with Image.open(src) as before:
        assert before.getexif().get_ifd(GPS_IFD)  # the fixture really carries GPS
        pixels = before.tobytes()
    stored = strip(src, tmp_path / "out", "image/jpeg")
    with Image.open(stored.path) as after:
        exif = after.getexif()
        assert not exif.get_ifd(GPS_IFD)
        assert 0x010F not in exif
        assert exif[0x0112] == 6
        assert after.tobytes() == pixels  # the scan data is copied, not re-encoded
    assert b"CameraMaker" not in stored.path.read_bytes()
    assert stored.bytes == stored.path.stat().st_size


def test_png_text_chunks_and_webp_exif_are_removed(tmp_path: Path) -> None:
    src = write(tmp_path, png_bytes(text="shot at 52.52N 13.41E"))
    stored = strip(src, tmp_path / "out.png", "image/png")
    assert b"52.52N" not in stored.path.read_bytes()
    assert inspect(stored.path, max_pixels=10_000).width == 64

    exif = Image.Exif()
    exif[0x010F] = "WebpMaker"
    out = io.BytesIO()
    Image.new("RGB", (20, 10), "red").save(out, format="WEBP", exif=exif.tobytes(), lossless=True)
    assert b"WebpMaker" in out.getvalue()
    webp = strip(write(tmp_path, out.getvalue(), "w"), tmp_path / "out.webp", "image/webp")
    data = webp.path.read_bytes()
    assert b"WebpMaker" not in data and b"EXIF" not in data
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8  # the RIFF size is right
    with Image.open(webp.path) as img:
        img.load()
        assert img.size == (20, 10) and img.getpixel((3, 3)) == (255, 0, 0)


def streamed(tmp_path: Path, data: bytes, *, piece: int = 1000, max_pixels: int = 10**7) -> Stored:
    """`data` through a StripStream in pieces of 1..`piece` bytes, as a request body arrives."""
    stream = StripStream(tmp_path / f"streamed-{uuid.uuid4().hex}", max_pixels=max_pixels)
    pieces = random.Random(len(data))
    at = 0
    while at < len(data):
        size = pieces.randint(1, piece)
        stream.write(data[at : at + size])
        at += size
    return stream.finish()


def png_chunks(data: bytes) -> list[bytes]:
    kinds, at = [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        kinds.append(kind)
        at += 12 + length
    return kinds


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_a_png_loses_exif_and_text_chunks_and_keeps_its_pixels_streamed_or_not(tmp_path: Path) -> None:
    from PIL import PngImagePlugin

    exif = Image.Exif()
    exif[0x010F] = "PngMaker"
    exif.get_ifd(GPS_IFD)[1] = "N"
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "shot at 52.52N 13.41E")
    info.add_text("Place", "Berlin, compressed", zip=True)
    info.add_itxt("Author", "Someone Identifiable")
    picture = Image.frombytes("RGB", (90, 70), random.Random(1).randbytes(90 * 70 * 3))
    out = io.BytesIO()
    picture.save(out, format="PNG", pnginfo=info, exif=exif.tobytes())
    data = out.getvalue()
    assert {b"eXIf", b"tEXt", b"zTXt", b"iTXt"} <= set(png_chunks(data))  # the fixture really carries them

    on_disk = strip(write(tmp_path, data), tmp_path / "out.png", "image/png", max_pixels=10**6)
    for piece in (1, 7, 4096, len(data)):
        arrived = streamed(tmp_path, data, piece=piece)
        assert (arrived.sha256, arrived.bytes, arrived.decoded) == (on_disk.sha256, on_disk.bytes, True)
        assert arrived.path.read_bytes() == on_disk.path.read_bytes()
    stored = on_disk.path.read_bytes()
    assert set(png_chunks(stored)) == {b"IHDR", b"IDAT", b"IEND"}
    for secret in (b"PngMaker", b"52.52N", b"Identifiable", b"eXIf", b"tEXt", b"zTXt", b"iTXt"):
        assert secret not in stored
    with Image.open(on_disk.path) as after:
        assert not after.getexif() and not after.info.get("Comment")
        assert after.tobytes() == picture.tobytes()
    assert check(on_disk, max_pixels=10**6).width == 90


def test_a_streamed_jpeg_loses_gps_and_keeps_orientation_and_pixels(tmp_path: Path) -> None:
    data = jpeg_with_gps(120, 60, orientation=3)
    with Image.open(io.BytesIO(data)) as before:
        pixels = before.tobytes()
    arrived = streamed(tmp_path, data, piece=50)
    assert arrived.content_type == "image/jpeg" and not arrived.decoded
    stored = arrived.path.read_bytes()
    assert b"CameraMaker" not in stored and arrived.bytes == len(stored)
    with Image.open(arrived.path) as after:
        exif = after.getexif()
        assert not exif.get_ifd(GPS_IFD) and exif[0x0112] == 3
        assert after.tobytes() == pixels
    assert (check(arrived, max_pixels=10**6).width, check(arrived, max_pixels=10**6).height) == (120, 60)


def interlaced_png(width: int, height: int, *, short: int = 0, bad_filter: bool = False) -> tuple[bytes, bytes]:
    """An Adam7 RGB PNG (Pillow writes none) and its pixels; `short` drops inflated bytes from its end."""
    pixels = random.Random(width * height).randbytes(width * height * 3)
    raw = bytearray()
    for x0, y0, dx, dy in ADAM7:
        for y in range(y0, height, dy):
            if x0 < width:
                raw.append(7 if bad_filter else 0)
                for x in range(x0, width, dx):
                    raw += pixels[(y * width + x) * 3 : (y * width + x) * 3 + 3]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    body = zlib.compress(bytes(raw[: len(raw) - short]))
    png = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")
    return png, pixels


def test_the_png_pixel_data_is_checked_as_it_streams(tmp_path: Path) -> None:
    for width, height in ((1, 1), (3, 5), (33, 17)):
        png, pixels = interlaced_png(width, height)
        assert streamed(tmp_path, png, piece=5).decoded
        with Image.open(io.BytesIO(png)) as img:
            assert img.tobytes() == pixels  # the hand-made interlaced file is a real PNG
        for broken in (interlaced_png(width, height, short=1)[0], interlaced_png(width, height, bad_filter=True)[0]):
            with pytest.raises(BadImage, match="scanline"):
                streamed(tmp_path, broken)
    data = bytearray(png_bytes(200, 200))
    data[data.index(b"IDAT") + 10] ^= 0xFF
    with pytest.raises(BadImage, match="inflate"):
        streamed(tmp_path, bytes(data))
    with pytest.raises(BadImage, match="pixel limit"):
        streamed(tmp_path, png_bytes(4000, 3000), max_pixels=1_000_000)  # refused at IHDR, nothing inflated
    with pytest.raises(NotAnImage):
        streamed(tmp_path, b"GIF89a" + b"\x00" * 100)
    with pytest.raises(BadImage):
        streamed(tmp_path, png_bytes()[:-12])  # no IEND


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    src = write(tmp_path, png_bytes(4000, 3000))  # 12 Mpx, a few kB compressed
    started = time.perf_counter()
    with pytest.raises(BadImage, match="pixel limit"):
        inspect(src, max_pixels=1_000_000)
    assert time.perf_counter() - started < 0.5


def test_truncated_and_disguised_files_are_refused(tmp_path: Path) -> None:
    data = png_bytes(200, 200)
    with pytest.raises(BadImage):
        strip(write(tmp_path, data[: len(data) // 2]), tmp_path / "o", "image/png")
    fake = write(tmp_path, b"\x89PNG\r\n\x1a\n" + b"not really" * 10, "fake")
    with pytest.raises(BadImage):
        inspect(fake, max_pixels=10**6)


BASE_ENV = {
    "SUPABASE_URL": "https://abc.supabase.co",
    "DATABASE_URL": "postgresql://postgres:pw@db.abc.supabase.co:5432/postgres",
    "S3_BUCKET": "images",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "ORCHESTRATOR_URL": "http://127.0.0.1:8000",
    "ORCHESTRATOR_TOKEN": "t",
}


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "canvas-strip-out"]


@pytest.mark.parametrize("size", [10, OUT_BLOCK - 1, OUT_BLOCK, 3 * OUT_BLOCK + 17])
def test_the_stripped_copy_is_written_and_hashed_whole_in_order(tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    with (tmp_path / "out").open("wb") as fh:
        out = Out(fh)
        for at in range(0, size, 65_536 + 3):  # pieces that never line up with its blocks
            out.write(memoryview(data)[at : at + 65_536 + 3])
        assert bool(_writer_threads()) == (size >= OUT_BLOCK)  # less than a block: written at finish, no thread
        assert out.finish() == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "out").read_bytes() == data and out.size == size and not _writer_threads()


class _FullDisk(io.BytesIO):
    def write(self, data: Any) -> int:
        if self.tell() + len(data) > 2 * OUT_BLOCK:
            raise OSError(28, "No space left on device")
        return super().write(data)


def test_a_failed_write_of_the_stripped_copy_is_raised_by_finish() -> None:
    out = Out(_FullDisk())
    for _ in range(5):
        out.write(bytes(OUT_BLOCK))
    with pytest.raises(OSError, match="No space left"):
        out.finish()
    assert not _writer_threads()


def test_closing_an_unfinished_copy_stops_its_thread(tmp_path: Path) -> None:
    with (tmp_path / "out").open("wb") as fh:
        out = Out(fh)
        for _ in range(4):
            out.write(bytes(OUT_BLOCK))
        assert _writer_threads()
        out.close()
        assert not _writer_threads()
        out.close()  # twice is fine


def test_settings_read_the_seeds_names_with_defaults() -> None:
    settings = Settings.from_env(BASE_ENV)
    assert (settings.port, settings.host, settings.bucket, settings.prefix) == (
        9000,
        "127.0.0.1",
        "images",
        "inputs/canvas/",
    )
    assert settings.jwks_url == "https://abc.supabase.co/auth/v1/.well-known/jwks.json"
    assert settings.issuer == "https://abc.supabase.co/auth/v1"
    assert Settings.from_env({**BASE_ENV, "S3_BUCKET": "", "ARTIFACTS_BUCKET": "art"}).bucket == "art"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"SUPABASE_URL": ""}, "SUPABASE_URL"),
        ({"SUPABASE_URL": "abc.supabase.co"}, "SUPABASE_URL"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"S3_BUCKET": ""}, "S3_BUCKET"),
        ({"AWS_DEFAULT_REGION": ""}, "AWS_DEFAULT_REGION"),
        ({"CANVAS_PORT": "ninety"}, "CANVAS_PORT"),
        ({"CANVAS_S3_PREFIX": "uploads/"}, "CANVAS_S3_PREFIX"),
        ({"CANVAS_MAX_PIXELS": "0"}, "CANVAS_MAX_PIXELS"),
        ({"SUPABASE_JWT_SECRET": "short"}, "SUPABASE_JWT_SECRET"),
        ({"ORCHESTRATOR_TOKEN": ""}, "ORCHESTRATOR_TOKEN"),
        ({"ORCHESTRATOR_AUTH": "iam"}, "ORCHESTRATOR_TOKEN"),  # a token beside IAM signing: which one is meant?
        ({"ORCHESTRATOR_AUTH": "kerberos"}, "ORCHESTRATOR_AUTH"),
    ],
)
def test_a_bad_setting_stops_the_start_with_one_line_naming_it(change: dict[str, str], named: str) -> None:
    with pytest.raises(SettingError) as caught:
        Settings.from_env({**BASE_ENV, **change})
    assert caught.value.name == named and "\n" not in str(caught.value)


def test_iam_mode_needs_no_token() -> None:
    """Against the deployed API: requests are signed with the service's AWS identity, no bearer token."""
    settings = Settings.from_env({**BASE_ENV, "ORCHESTRATOR_AUTH": "iam", "ORCHESTRATOR_TOKEN": ""})
    assert settings.orchestrator_token is None


def test_python_m_canvas_exits_2_naming_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    from canvas.__main__ import main

    assert main([], {**BASE_ENV, "CANVAS_PORT": "-1"}) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("canvas: setting CANVAS_PORT:") and "\n" not in err


def verifier(auth: AuthServer, **kw: object) -> Verifier:
    cache = JwksCache(f"{auth.issuer}/.well-known/jwks.json", max_age_s=600, min_refetch_s=0)
    return Verifier(issuer=auth.issuer, audience="authenticated", jwks=cache, secret=kw.get("secret", HS_SECRET))  # type: ignore[arg-type]


def test_tokens_verify_against_the_projects_jwks_and_follow_rotation(auth_server: AuthServer) -> None:
    check = verifier(auth_server)
    user = str(uuid.uuid4())
    assert check.verify(token(auth_server, user)).id == user
    assert check.verify(token(auth_server, user)).id == user
    fetched = check.jwks.fetches
    assert fetched == 1  # cached
    auth_server.rotate()  # a new signing key: tokens name a kid the cached set lacks
    assert check.verify(token(auth_server, user)).id == user
    assert check.jwks.fetches == fetched + 1


def test_a_check_that_may_not_fetch_never_blocks(auth_server: AuthServer) -> None:
    """The event loop's check (canvas.app.user_of): answered from the cache, or KeysNeedFetch, never a fetch or a
    wait on another thread's fetch."""
    check = verifier(auth_server)
    user = str(uuid.uuid4())
    with pytest.raises(KeysNeedFetch):  # nothing cached yet
        check.verify(token(auth_server, user), may_fetch=False)
    assert check.jwks.fetches == 0
    assert check.verify(token(auth_server, user)).id == user
    assert check.verify(token(auth_server, user), may_fetch=False).id == user
    auth_server.rotate()
    with pytest.raises(KeysNeedFetch):  # a kid the cached set lacks
        check.verify(token(auth_server, user), may_fetch=False)
    assert check.jwks.fetches == 1
    assert check.verify(token(auth_server, user)).id == user
    with check.jwks._lock, pytest.raises(KeysNeedFetch):  # another thread holds the lock: it is fetching
        check.verify(token(auth_server, user), may_fetch=False)
    with pytest.raises(Unauthorized):  # an expired token is refused as before, without a fetch
        check.verify(token(auth_server, user, exp_in=-120), may_fetch=False)


@pytest.mark.parametrize("problem", ["expired", "audience", "issuer", "forged", "sub", "hs256_wrong", "alg_none"])
def test_bad_tokens_are_unauthorized(auth_server: AuthServer, problem: str) -> None:
    check = verifier(auth_server)
    user = str(uuid.uuid4())
    bad = {
        "expired": lambda: token(auth_server, user, exp_in=-120),
        "audience": lambda: token(auth_server, user, aud="anon-app"),
        "issuer": lambda: token(auth_server, user, iss="https://other.supabase.co/auth/v1"),
        # signed by a key the project never published, under a kid it did publish
        "forged": lambda: token(
            auth_server, user, key=ECKey.generate_key("P-256", parameters={"kid": str(auth_server.keys[-1].kid)})
        ),
        "sub": lambda: token(auth_server, "not-a-uuid"),
        "hs256_wrong": lambda: hs_token(auth_server, user, secret="x" * 40),
        "alg_none": lambda: "eyJhbGciOiJub25lIn0." + token(auth_server, user).split(".")[1] + ".",
    }[problem]()
    with pytest.raises(Unauthorized):
        check.verify(bad)


def test_legacy_hs256_needs_the_secret(auth_server: AuthServer) -> None:
    user = str(uuid.uuid4())
    assert verifier(auth_server).verify(hs_token(auth_server, user)).id == user
    with pytest.raises(Unauthorized, match="HS256"):
        verifier(auth_server, secret=None).verify(hs_token(auth_server, user))


def test_authorization_header_forms() -> None:
    assert bearer_token("Bearer abc") == "abc"
    for bad in (None, "", "Basic abc", "Bearer "):
        with pytest.raises(Unauthorized):
            bearer_token(bad)


def test_the_periodic_reconcile_keeps_running_after_a_failed_pass_and_stops() -> None:
    import threading

    from canvas.reconcile import Periodic

    calls: list[int] = []
    twice = threading.Event()

    def run() -> None:
        calls.append(1)
        if len(calls) >= 3:
            twice.set()
        if len(calls) == 1:
            raise RuntimeError("the database is away")

    periodic = Periodic(0.02, run)
    periodic.start()
    assert twice.wait(5)
    periodic.stop()
    seen = len(calls)
    time.sleep(0.1)
    assert len(calls) == seen  # stopped
