"""Stop strings on streamed text: a match ends the stream, and neither the stop string
nor any part of it is ever emitted."""

from __future__ import annotations

import random

import pytest

from orchestrator.frontend.preprocess import StopJail


def run(stop: list[str], pushes: list[str]) -> tuple[list[str], str | None, str]:
    """(what each push emitted, the stop matched, what flush released)."""
    jail, emitted, matched = StopJail(stop), [], None
    for text in pushes:
        safe, hit = jail.push(text)
        emitted.append(safe)
        matched = matched or hit
    return emitted, matched, jail.flush()


def test_stop_split_across_pushes():
    emitted, matched, rest = run(["lo w"], ["He", "llo wor", "ld"])
    assert "".join(emitted) == "Hel" and matched == "lo w"
    assert emitted[2] == "" and rest == "", "nothing after the stop leaks"


def test_text_that_may_begin_a_stop_is_held_then_released():
    jail = StopJail(["lo w"])
    assert jail.push("Hello") == ("Hel", None)  # "lo" might begin "lo w"
    assert jail.push(" there") == ("lo there", None)  # it did not
    assert jail.push(" pal") == (" pa", None)
    assert jail.flush() == "l"


def test_no_stop_strings_pass_everything_through():
    assert run([], ["a", "b"]) == (["a", "b"], None, "")


def test_without_a_match_flush_releases_the_held_text():
    emitted, matched, rest = run(["END", "STOP"], ["The E", "N", "d S", "TO"])
    assert matched is None
    assert "".join(emitted) == "The ENd " and rest == "STO"


def test_stop_at_the_very_start():
    assert run(["Hello"], ["Hello world"]) == ([""], "Hello", "")
    assert run(["Hello"], ["Hel", "lo", " world"]) == (["", "", ""], "Hello", "")


def test_overlapping_candidates_shorter_completes_first():
    assert run(["abc", "ab"], ["xa", "b", "c"]) == (["x", "", ""], "ab", "")


def test_overlapping_candidates_longer_wins_when_both_complete_together():
    # "bc" and "abc" both end at the same character: none of "abc" may leak.
    assert run(["bc", "abc"], ["xabcy"]) == (["x"], "abc", "")


def test_a_failed_longer_candidate_keeps_the_shorter_one_held():
    # "abc" is held as a start of "abcx"; the "d" ends that, but "cd" then matches.
    assert run(["abcx", "cd"], ["zabc", "d!"]) == (["z", "ab"], "cd", "")


def test_self_overlapping_stop_string():
    emitted, matched, _ = run(["aab"], ["a", "a", "a", "a", "b", "zz"])
    assert ("".join(emitted), matched) == ("aa", "aab")
    # After "aba" fails on "b", the match resumes from the "ab" it already saw.
    assert run(["abac"], ["ababac!"]) == (["ab"], "abac", "")
    # Resuming needs the right border of "aabaaa" ("aa", not "a").
    assert run(["aabaaabab"], ["aabaaabaaababbb"]) == (["aaba"], "aabaaabab", "")


def test_pushes_after_a_match_are_ignored():
    jail = StopJail(["#"])
    assert jail.push("a#b") == ("a", "#")
    assert jail.push("more") == ("", None)
    assert jail.flush() == ""


def test_empty_stop_string_is_rejected():
    with pytest.raises(ValueError):
        StopJail(["ok", ""])


def first_stop(text: str, stops: list[str]) -> tuple[str, str | None]:
    """The reference: the match ending first, the longest among those ending together."""
    matches = [(text.find(stop) + len(stop), -len(stop), stop) for stop in stops if stop in text]
    if not matches:
        return text, None
    end, _, stop = min(matches)
    return text[: end - len(stop)], stop


def test_any_chunking_gives_the_reference_outcome():
    rng = random.Random(5)
    stops = ["abab", "bba", "ca", "aaa", "abcab"]
    for _ in range(2000):
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 30)))
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 6))))
        pushes = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
        emitted, matched, rest = run(stops, pushes)
        assert ("".join(emitted) + rest, matched) == first_stop(text, stops), (text, pushes)
