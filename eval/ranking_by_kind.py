#!/usr/bin/env python3
"""HR@K of `recstream eval --ranking K --predictions P` split by what the event is to its user.

    python3 eval/ranking_by_kind.py EVENTS PREDICTIONS [K]

Each ranked event is a user's first event, a repeat of an item the user had
before, or an item new to the user. For each kind it prints the model's HR@K
(from the scores in PREDICTIONS), and, over the same candidates, that of
all-time popularity and of the user's own items first (by the user's count,
then popularity: the `user_items` baseline), both recomputed here from
EVENTS. So one sees where the model gains or loses against them (EVAL.md).
Ranks count candidates scored higher plus half the ties, as eval does.
PREDICTIONS has a line per accepted event: run it on a file eval rejected
nothing of (its summary says so).
"""
import collections
import json
import sys


def rank(score, others):
    return sum(1 for s in others if s > score) + 0.5 * sum(1 for s in others if s == score)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    k = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    count = collections.Counter()
    history = collections.defaultdict(collections.Counter)
    stats = collections.defaultdict(lambda: [0, 0, 0, 0])  # events, model, popularity, user items
    with open(sys.argv[1]) as events, open(sys.argv[2]) as predictions:
        for line in events:
            e = json.loads(line)
            p = json.loads(next(predictions))
            user, item = e["user"], e["item"]
            if "rank" in p:
                cands = p["rank"]["candidates"]
                h = history[user]
                kind = "first" if not h else ("repeat" if h[item] else "new_to_user")
                st = stats[kind]
                st[0] += 1
                st[1] += rank(p["rank"]["score"], [s for _, s in cands]) < k
                st[2] += rank(count[item], [count[c] for c, _ in cands]) < k
                st[3] += rank((h[item], count[item]), [(h[c], count[c]) for c, _ in cands]) < k
            count[item] += 1
            history[user][item] += 1
    print(f"{'kind':12s} {'events':>8s} {'model':>7s} {'popularity':>10s} {'user_items':>10s}")
    for kind, (n, m, pop, ui) in sorted(stats.items()):
        print(f"{kind:12s} {n:8d} {m / n:7.4f} {pop / n:10.4f} {ui / n:10.4f}")


if __name__ == "__main__":
    main()
