"""`$(VAR:-default)` expansion of symlink targets (fact sheet 6.10)."""

from __future__ import annotations

import pytest

from pycvmfs.format.symlinks import expand_symlink


@pytest.mark.parametrize(("target", "env", "expanded"), [
    ("plain/target", {}, "plain/target"),
    ("$(ARCH:-x86_64)/lib", {}, "x86_64/lib"),
    ("$(ARCH:-x86_64)/lib", {"ARCH": "aarch64"}, "aarch64/lib"),
    ("$(ARCH:-x86_64)/lib", {"ARCH": ""}, "/lib"),  # set but empty: empty
    ("/sw/$(OS)/$(ARCH)", {"OS": "el9", "ARCH": "arm"}, "/sw/el9/arm"),
    ("/sw/$(UNSET)/x", {}, "/sw//x"),
    ("broken $(NAME", {"NAME": "v"}, "broken $(NAME"),  # unmatched: literal
    ("a$(X:-)b", {}, "ab"),
    ("$(A)$(B:-b)", {"A": "a"}, "ab"),
])
def test_expand(target: str, env: dict[str, str], expanded: str) -> None:
    assert expand_symlink(target, env) == expanded
