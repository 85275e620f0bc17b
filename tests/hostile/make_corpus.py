#!/usr/bin/env python3
"""Writes the hostile-event corpus: one file per case (the exact Kafka message
bytes) and EXPECTED, listing "<file> <reason>" with the reject reason the
service must report (ingest/parser.h RejectReasonName). Deterministic: run it
again after editing a case; the files are kept in the repository."""
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = []


def case(name, data, reason):
    if isinstance(data, str):
        data = data.encode("utf-8")
    CASES.append((name, data, reason))


def ev(**fields):
    parts = []
    for k, v in fields.items():
        parts.append('"%s":%s' % (k, v))
    return "{" + ",".join(parts) + "}"


CLICK = dict(type='"click"', user='"u1"', item='"i1"', label="1")
RATING = dict(type='"rating"', user='"u1"', item='"i1"', value="4")


def click(**over):
    d = dict(CLICK)
    d.update(over)
    return ev(**{k: v for k, v in d.items() if v is not None})


def rating(**over):
    d = dict(RATING)
    d.update(over)
    return ev(**{k: v for k, v in d.items() if v is not None})


# Malformed JSON.
case("empty", b"", "malformed_json")
case("whitespace", b"   \n\t ", "malformed_json")
case("truncated_mid_key", click()[:40], "malformed_json")
case("truncated_after_comma", '{"type":"click",', "malformed_json")
case("open_brace", "{", "malformed_json")
case("unterminated_string", '{"type":"click","user":"u', "malformed_json")
case("trailing_garbage", click() + "xyz", "malformed_json")
case("two_objects", click() + click(), "malformed_json")
case("single_quotes", "{'type':'click','user':'u','item':'i','label':1}", "malformed_json")
case("comment", '{"type":"click", /* c */ "user":"u","item":"i","label":1}', "malformed_json")
case("raw_newline_in_string", '{"type":"click","user":"u\n1","item":"i","label":1}',
     "malformed_json")
case("unquoted_key", '{type:"click","user":"u","item":"i","label":1}', "malformed_json")
case("missing_colon", '{"type" "click","user":"u","item":"i","label":1}', "malformed_json")
case("trailing_comma", click()[:-1] + ",}", "malformed_json")
case("bom_prefix", b"\xef\xbb\xbf" + click().encode(), "malformed_json")
case("nul_bytes", b"\x00\x00\x00\x00", "malformed_json")
case("deep_array_nesting", "[" * 100000 + "]" * 100000, "malformed_json")
case("deep_object_nesting_in_truth",
     '{"type":"click","user":"u","item":"i","label":1,"truth":' + '{"a":' * 5000 + "1" +
     "}" * 5000 + "}", "malformed_json")
case("deep_nesting_truncated", "[" * 5000, "malformed_json")
# Not an object.
case("top_level_array", "[1,2,3]", "not_object")
case("top_level_string", '"click"', "not_object")
case("top_level_number", "42", "not_object")
case("top_level_null", "null", "not_object")
case("top_level_true", "true", "not_object")
# Type.
case("missing_type", ev(user='"u"', item='"i"', label="1"), "missing_type")
case("type_number", click(type="1"), "bad_type")
case("type_unknown", click(type='"view"'), "bad_type")
case("type_empty", click(type='""'), "bad_type")
case("type_null", click(type="null"), "bad_type")
case("duplicate_type_last_bad", '{"type":"click","type":"bogus","user":"u","item":"i","label":1}',
     "bad_type")
# Users and items.
case("missing_user", click(user=None), "missing_user")
case("user_null", click(user="null"), "bad_user")
case("user_negative", click(user="-1"), "bad_user")
case("user_float", click(user="1.5"), "bad_user")
# Valid JSON, but simdjson refuses integers beyond 64 bits while parsing, so
# the parser reports the document as malformed rather than the user as bad.
case("user_over_u64", click(user="18446744073709551616"), "malformed_json")
case("user_bool", click(user="true"), "bad_user")
case("user_object", click(user="{}"), "bad_user")
case("user_empty", click(user='""'), "bad_user")
case("user_257_bytes", click(user='"' + "u" * 257 + '"'), "id_too_long")
case("missing_item", click(item=None), "missing_item")
case("item_array", click(item='["i1"]'), "bad_item")
case("item_257_bytes", click(item='"' + "x" * 257 + '"'), "id_too_long")
case("item_1mb_string", click(item='"' + "y" * 1000000 + '"'), "id_too_long")
case("item_900kb_string", click(item='"' + "z" * 900000 + '"'), "id_too_long")
case("message_over_1mib", click(item='"' + "w" * (1 << 20) + '"'), "too_large")
# Labels and values.
case("label_2", click(label="2"), "bad_label")
case("label_string", click(label='"1"'), "bad_label")
case("label_negative", click(label="-1"), "bad_label")
case("label_half", click(label="0.5"), "bad_label")
case("label_true", click(label="true"), "bad_label")
case("duplicate_label_last_bad", click()[:-1] + ',"label":7}', "bad_label")
case("label_nan", click(label="NaN"), "non_finite")
case("value_nan", rating(value="NaN"), "non_finite")
case("value_infinity", rating(value="Infinity"), "non_finite")
case("value_minus_infinity", rating(value="-Infinity"), "non_finite")
case("value_overflow", rating(value="1e400"), "non_finite")
case("value_missing", rating(value=None), "missing_value")
case("value_string", rating(value='"4"'), "bad_value")
case("value_null", rating(value="null"), "bad_value")
case("value_9", rating(value="9"), "rating_out_of_range")
case("value_0", rating(value="0"), "rating_out_of_range")
# Timestamps.
case("ts_negative", click(ts="-5"), "bad_ts")
case("ts_string", click(ts='"yesterday"'), "bad_ts")
case("ts_float", click(ts="1.5"), "bad_ts")
# Features.
case("features_not_array", click(user_features='"a=b"'), "bad_features")
case("features_number", click(user_features="[1]"), "bad_features")
case("features_empty_string", click(item_features='[""]'), "bad_features")
case("features_257_bytes", click(item_features='["' + "f" * 257 + '"]'), "bad_features")
case("features_65", click(user_features="[" + ",".join('"f%d"' % i for i in range(65)) + "]"),
     "too_many_features")
case("features_10000",
     click(item_features="[" + ",".join('"c=%d"' % i for i in range(10000)) + "]"),
     "too_many_features")
# Ground truth.
case("truth_not_object", click(truth="0.5"), "bad_truth")
case("truth_p_2", click(truth='{"p":2}'), "bad_truth")
case("truth_p_nan", click(truth='{"p":NaN}'), "non_finite")
# Encoding.
case("invalid_utf8_ff", b'{"type":"click","user":"u\xff","item":"i","label":1}', "invalid_utf8")
case("invalid_utf8_overlong", b'{"type":"click","user":"\xc0\xaf","item":"i","label":1}',
     "invalid_utf8")
case("invalid_utf8_truncated_seq", b'{"type":"click","user":"\xe2\x82","item":"i","label":1}',
     "invalid_utf8")
case("invalid_utf8_surrogate_bytes", b'{"type":"click","user":"\xed\xa0\x80","item":"i","label":1}',
     "invalid_utf8")
rng = random.Random(20261122)
case("binary_garbage_1", bytes(rng.randrange(256) for _ in range(512)), "invalid_utf8")
case("binary_garbage_2", bytes(rng.randrange(128, 256) for _ in range(64)), "invalid_utf8")
case("binary_ascii_noise", bytes(rng.randrange(32, 127) for _ in range(300)), "malformed_json")

if __name__ == "__main__":
    for f in os.listdir(HERE):
        if f.endswith(".bin"):
            os.remove(os.path.join(HERE, f))
    with open(os.path.join(HERE, "EXPECTED"), "w") as out:
        out.write("# file reason  (written by make_corpus.py)\n")
        for i, (name, data, reason) in enumerate(CASES):
            fname = "%02d_%s.bin" % (i, name)
            with open(os.path.join(HERE, fname), "wb") as f:
                f.write(data)
            out.write("%s %s\n" % (fname, reason))
    print(len(CASES), "cases")
