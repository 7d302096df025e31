"""User-typed inputs: globs, remote schemes through their clients, refused patterns."""
from __future__ import annotations

import shutil

import pytest

from dcompress.errors import InputDataError, UsageError
from dcompress.io.urls import opener_url, resolve_urls


def test_quoted_glob_works_like_a_brace_pattern(shards):
    by_glob = resolve_urls(str(shards["train"] / "train-*.tar")).urls
    by_brace = resolve_urls(str(shards["train"] / "train-{000000..000003}.tar")).urls
    assert by_glob == by_brace and len(by_glob) == 4
    with pytest.raises(InputDataError, match="no file matches"):
        resolve_urls(str(shards["train"] / "nothing-*.tar"))


@pytest.mark.parametrize("url,client", [("http://h/x.tar", "curl"), ("https://h/x.tar", "curl"),
                                        ("s3://b/x.tar", "aws"), ("gs://b/x.tar", "gsutil")])
def test_remote_urls_go_through_their_client_and_a_missing_one_is_named(monkeypatch, url, client):
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    opened = opener_url(url)
    assert opened.startswith(f"pipe:{client} ") and url in opened
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UsageError, match=f"`{client}`, which is not on PATH"):
        opener_url(url)


def test_a_quote_in_a_url_cannot_break_out_of_the_command(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/curl")
    assert opener_url("http://h/x.tar;touch /tmp/pwned") == \
        "pipe:curl -f -sS -L --connect-timeout 15 --retry 2 --retry-delay 1 'http://h/x.tar;touch /tmp/pwned'"


@pytest.mark.parametrize("pattern,needle", [("x-{000..001.tar", "unbalanced braces"), ("x-{}.tar", "empty brace"),
                                            ("x-{0000000000..9999999999}.tar", "more than 1000000 shards")])
def test_bad_patterns_are_usage_errors(tmp_path, pattern, needle):
    with pytest.raises(UsageError, match=needle):
        resolve_urls(str(tmp_path / pattern))
