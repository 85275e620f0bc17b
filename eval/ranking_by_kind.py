#!/usr/bin/env python3
"""HR@K of `recstream eval --ranking K --predictions P` split by what the event is to its user.

    python3 eval/ranking_by_kind.py EVENTS PREDICTIONS [K]

Each ranked event is a user's first event, a repeat of an item the user had
before, or an item new to the user. When items carry features (such as
`category=`), an item new to the user is split further: of a feature the user
had before (`new_item_known_feature`), or of none (`new_feature`). Each kind is
also split into warm (the item was seen in the stream before) and cold.

For each kind it prints the model's HR@K (from the scores in PREDICTIONS), and,
over the same candidates, that of all-time popularity, of recency-decayed
popularity (the `popularity_decayed` baseline: half-life 10,000 events) and of
the user's own items first (by the user's count, then popularity: the
`user_items` baseline), all recomputed here from EVENTS, and chance
(K / candidates).

It then prints an optimistic estimate of the best overall HR@K a ranker could
reach: 1.0 on the kinds that carry a signal about the user (repeats, and items
of a feature the user had), and on the others the best of the model, the
popularity rankers and chance, where for `new_feature` chance counts only the
candidates that share no feature with the user's earlier items (a ranker told
the event is of a new feature could set those aside). No ranker is perfect
where there is signal, and none knows which kind an event is; but on the kinds
without a user signal a ranker using other signals than those measured here
could do better, so it is an estimate, not a proof. EVAL.md uses it to show how
far a target ratio is within reach on a stream.

Ranks count candidates scored higher plus half the ties, as eval does.
PREDICTIONS has a line per accepted event: run it on a file eval rejected
nothing of (its summary says so).
"""
import collections
import json
import math
import sys

HALF_LIFE = 10000.0  # RankingBaselines::kPopularityHalfLife


def rank(score, others):
    return sum(1 for s in others if s > score) + 0.5 * sum(1 for s in others if s == score)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    k = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    # The features of each item's first event: the catalogue's, as eval uses
    # for a cold candidate (a candidate seen before has its last-seen ones,
    # which on the generated streams are the same).
    features_of = {}
    with open(sys.argv[1]) as events:
        for line in events:
            e = json.loads(line)
            features_of.setdefault(e["item"], tuple(e.get("item_features", ())))
    count = collections.Counter()
    decayed = {}  # item -> (value, at)
    seen = 0
    history = collections.defaultdict(collections.Counter)
    user_features = collections.defaultdict(set)
    # kind -> events, model, popularity, decayed popularity, user items, chance, chance among
    # candidates of no feature of the user's
    stats = collections.defaultdict(lambda: [0, 0, 0, 0, 0, 0.0, 0.0])

    def decayed_now(item):
        v = decayed.get(item)
        return 0.0 if v is None else v[0] * math.exp2(-(seen - v[1]) / HALF_LIFE)

    with open(sys.argv[1]) as events, open(sys.argv[2]) as predictions:
        for line in events:
            e = json.loads(line)
            p = json.loads(next(predictions))
            user, item = e["user"], e["item"]
            if "rank" in p:
                cands = p["rank"]["candidates"]
                h = history[user]
                uf = user_features[user]
                if not h:
                    kind = "first"
                elif h[item]:
                    kind = "repeat"
                elif not features_of.get(item):
                    kind = "new_to_user"
                elif uf.intersection(features_of[item]):
                    kind = "new_item_known_feature"
                else:
                    kind = "new_feature"
                kind += " (warm)" if count[item] else " (cold)"
                st = stats[kind]
                st[0] += 1
                st[1] += rank(p["rank"]["score"], [s for _, s in cands]) < k
                st[2] += rank(count[item], [count[c] for c, _ in cands]) < k
                st[3] += rank(decayed_now(item), [decayed_now(c) for c, _ in cands]) < k
                st[4] += rank((h[item], count[item]), [(h[c], count[c]) for c, _ in cands]) < k
                st[5] += min(1.0, k / (len(cands) + 1))
                unknown = sum(1 for c, _ in cands if not uf.intersection(features_of.get(c, ())))
                st[6] += min(1.0, k / (unknown + 1))
            # What the baselines learn from (RankingBaselines::Learn): positive
            # clicks and purchases only.
            if e.get("type") not in ("click", "purchase") or float(e.get("label", 1)) <= 0.5:
                continue
            seen += 1
            count[item] += 1
            decayed[item] = (decayed_now(item) + 1.0, seen)
            history[user][item] += 1
            user_features[user].update(e.get("item_features", ()))
    print(f"{'kind':32s} {'events':>8s} {'model':>7s} {'popularity':>10s} {'decayed':>8s} "
          f"{'user_items':>10s} {'chance':>7s}")
    total = model = bound = 0.0
    for kind, (n, m, pop, dec, ui, chance, chance_new) in sorted(stats.items()):
        print(f"{kind:32s} {n:8d} {m / n:7.4f} {pop / n:10.4f} {dec / n:8.4f} {ui / n:10.4f} "
              f"{chance / n:7.4f}")
        signal = kind.startswith("repeat") or kind.startswith("new_item_known_feature")
        best = max(m, pop, dec, chance_new if kind.startswith("new_feature") else chance)
        total += n
        model += m
        bound += n if signal else best
    print(f"{'all':32s} {int(total):8d} {model / total:7.4f}")
    print(f"estimated best HR@{k} (1.0 where the user gives a signal, else the best of the above): "
          f"{bound / total:.4f}")


if __name__ == "__main__":
    main()
