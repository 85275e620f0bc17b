#!/usr/bin/env python3
"""Keep a few users' events of a stream, as a held-out user slice of a shop log does.

    python3 eval/user_slice.py EVENTS MIN_EVENTS USERS SEED [--categories] > SLICE

Of the users with at least MIN_EVENTS events in EVENTS (a JSONL stream), USERS
are drawn (Python's random.sample with SEED, over the users in the order of
their first event), and every event of theirs is written in stream order.
With --categories, each event's item is replaced by its `category=` feature
(the first one the stream gives that item) and the item features are dropped (every candidate warm, as the issue's "items
replaced by their categories" runs). EVAL.md, "Slices of a few users", uses
it: the model then learns from those users' events alone.
"""
import collections
import json
import random
import sys


def main():
    args = [a for a in sys.argv[1:] if a != "--categories"]
    if len(args) != 4:
        sys.exit(__doc__)
    path, min_events, users, seed = args[0], int(args[1]), int(args[2]), int(args[3])
    categories = "--categories" in sys.argv[1:]
    counts = collections.Counter()
    # Each item's category, from the first event that carries one: a log
    # may send an item's features with its first event only.
    category_of = {}
    with open(path) as f:
        for line in f:
            e = json.loads(line)
            counts[str(e["user"])] += 1
            if categories and e["item"] not in category_of:
                cats = [x for x in (e.get("item_features") or ()) if x.startswith("category=")]
                if cats:
                    category_of[e["item"]] = cats[0].split("=", 1)[1]
    eligible = [u for u, n in counts.items() if n >= min_events]
    random.seed(seed)
    chosen = set(random.sample(eligible, min(users, len(eligible))))
    print(f"{len(eligible)} users with at least {min_events} events, {len(chosen)} kept",
          file=sys.stderr)
    with open(path) as f:
        for line in f:
            e = json.loads(line)
            if str(e["user"]) not in chosen:
                continue
            if categories:
                e["item"] = category_of.get(e["item"], e["item"])
                e.pop("item_features", None)
                sys.stdout.write(json.dumps(e, separators=(",", ":")) + "\n")
            else:
                sys.stdout.write(line)


if __name__ == "__main__":
    main()
