"""Asset bundles are deterministic: same sources, same bytes, whatever the checkout, mtimes or order of files."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pytest

from modules.assets import bundle
from modules.config import ROOT


def copy_tree(dst: Path) -> Path:
    for package in ("adapter", "functions"):
        shutil.copytree(ROOT / package, dst / package, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_same_sources_same_hash_on_another_checkout_with_other_mtimes(tmp_path: Path) -> None:
    first = bundle("adapter", [(ROOT, "adapter"), (ROOT, "functions")], out_dir=tmp_path / "a")
    other = copy_tree(tmp_path / "checkout")
    for path in other.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    (other / "adapter" / "__pycache__").mkdir(exist_ok=True)
    (other / "adapter" / "__pycache__" / "junk.cpython-311.pyc").write_bytes(b"compiled")
    second = bundle("adapter", [(other, "adapter"), (other, "functions")], out_dir=tmp_path / "b")
    assert first.sha256_hex == second.sha256_hex
    assert first.path.read_bytes() == second.path.read_bytes()


def test_a_source_change_changes_the_hash(tmp_path: Path) -> None:
    other = copy_tree(tmp_path / "checkout")
    before = bundle("adapter", [(other, "adapter")], out_dir=tmp_path / "a")
    with (other / "adapter" / "__init__.py").open("a") as handle:
        handle.write("\n# changed\n")
    after = bundle("adapter", [(other, "adapter")], out_dir=tmp_path / "b")
    assert before.sha256_hex != after.sha256_hex


def test_lambda_zip_layout_matches_its_handler(tmp_path: Path) -> None:
    built = bundle("lambda", [(ROOT / "functions", "shutdown")], out_dir=tmp_path)
    names = zipfile.ZipFile(built.path).namelist()
    assert "shutdown/handler.py" in names and "shutdown/__init__.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    info = zipfile.ZipFile(built.path).getinfo("shutdown/handler.py")
    assert info.date_time == (1980, 1, 1, 0, 0, 0)


def test_reserved_lambda_environment_keys_are_refused() -> None:
    from cdktf import App, TerraformStack

    from modules.function import FunctionSettings, PythonFunction

    stack = TerraformStack(App(), "reserved")
    with pytest.raises(ValueError, match="AWS_REGION is reserved"):
        PythonFunction(
            stack,
            "fn",
            settings=FunctionSettings(
                name="f", role="arn:aws:iam::123456789012:role/r", environment={"AWS_REGION": "x"}
            ),
            package="shutdown",
            handler="shutdown.handler.handler",
            region="us-east-1",
            account="123456789012",
        )


def test_the_core_import_scan_is_kept_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """modules.assets._ImportsCache: a file is parsed once per content; an edit, a cache of other code (salt) or
    a cache that does not parse all mean a fresh scan."""
    import ast

    from modules import assets

    parsed: list[str] = []
    real_parse = ast.parse

    def counting_parse(text: str, filename: str = "<unknown>", *args: object, **kw: object) -> ast.Module:
        parsed.append(filename)
        return real_parse(text, filename)

    monkeypatch.setattr(assets.ast, "parse", counting_parse)
    program = tmp_path / "program.py"
    program.write_text("from core import store\n\ndef late():\n    from core.message import TaskMessage\n")
    cache_file = tmp_path / "cache" / "core-imports.json"

    first = assets._ImportsCache(cache_file)
    assert first.get(program, inside_core=False) == {"store", "message"}
    first.save()
    again = assets._ImportsCache(cache_file)
    assert again.get(program, inside_core=False) == {"store", "message"} and len(parsed) == 1  # from the cache
    program.write_text("import core.hosts\n")
    assert again.get(program, inside_core=False) == {"hosts"} and len(parsed) == 2  # new content, new scan

    for broken in ("not json", '{"salt": "of other code", "entries": {}}'):
        cache_file.write_text(broken)
        assert assets._ImportsCache(cache_file).get(program, inside_core=False) == {"hosts"}
    assert len(parsed) == 4
