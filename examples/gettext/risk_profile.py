"""Where the time of a sequence_risk update goes: process CPU seconds of each part, summed over a few
training batches, from a trained checkpoint (one thread).

    OMP_NUM_THREADS=1 python examples/gettext/risk_profile.py CHECKPOINT DATA [--candidates 4]
        [--max-tokens 1000] [--sampling] [--batches 4] [--logits]
    # headlines (examples/summarization): ROUGE-L cost, candidates of at most 30 tokens
    ... --cost rougeL --max-len-a 0 --max-len-b 30 --detok moses --target-lang en

``--logits`` scores the candidates through the full ``candidates x T x V`` logits instead of fc3
chunk by chunk (the criterion's ``fused_candidates = False``): the same numbers, for comparison.

Parts: the token-level loss (forward), candidate generation (the task's generator: FConvBeamSearch for
beam candidates, fairseq's SequenceGenerator for sampling), the candidates' forward pass, their costs
(sentence BLEU) and the backward pass of the combined loss.
"""

import argparse
import json
import resource
import time

import torch
from fairseq import checkpoint_utils

import fconv_plugin  # noqa: F401  (registers the model, task and criterion)
from fconv_plugin.criterions import SequenceRiskCriterion, expected_risk


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("data")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=1000)
    parser.add_argument("--sampling", action="store_true")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--cost", choices=["bleu", "rougeL"], default="bleu", help="--risk-cost")
    parser.add_argument("--max-len-a", type=float, default=1.2, help="--risk-max-len-a")
    parser.add_argument("--max-len-b", type=int, default=10, help="--risk-max-len-b")
    parser.add_argument("--detok", default="moses_protected", help="--eval-bleu-detok")
    parser.add_argument("--target-lang", default="de", help="the target language the detokenizer is for")
    parser.add_argument("--logits", action="store_true", help="candidates through the full logits (see above)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [args.checkpoint],
        arg_overrides={
            "data": args.data,
            "eval_bleu_detok": args.detok,
            "eval_bleu_detok_args": json.dumps({"target_lang": args.target_lang}),
        },
    )
    model = models[0].train()
    task.tokenizer = task._build_detokenizer()
    task.load_dataset("train")
    crit = SequenceRiskCriterion(
        task,
        False,
        0.1,
        risk_alpha=args.alpha,
        risk_candidates=args.candidates,
        risk_beam=args.candidates,
        risk_sampling=args.sampling,
        risk_max_len_a=args.max_len_a,
        risk_max_len_b=args.max_len_b,
        risk_cost=args.cost,
    )
    crit.fused_candidates = not args.logits
    batches = task.get_batch_iterator(
        task.dataset("train"), max_tokens=args.max_tokens, max_positions=model.max_positions(), seed=1
    ).next_epoch_itr(shuffle=True)
    seconds = {}

    def timed(name, fn):
        start = time.process_time()
        result = fn()
        seconds[name] = seconds.get(name, 0.0) + time.process_time() - start
        return result

    for i, sample in enumerate(batches):
        if i == args.batches:
            break
        tok_loss, _ = timed("token loss", lambda: crit.token_loss(model, sample))
        cands = timed("generation", lambda: crit.generate_candidates(model, sample))
        scores, mask = timed("candidates' forward", lambda: crit.candidate_scores(model, sample, cands))
        costs = torch.zeros_like(scores)

        def fill_costs():
            for j, cs in enumerate(cands):
                costs[j, : len(cs)] = torch.tensor(task.sentence_costs(cs, sample["target"][j], args.cost))

        timed("costs", fill_costs)
        nsent = sample["target"].size(0)
        risk = expected_risk(scores, costs, mask).sum() * (sample["ntokens"] / nsent)
        loss = args.alpha * tok_loss + (1 - args.alpha) * risk
        timed("backward", loss.backward)
        model.zero_grad()
    total = sum(seconds.values())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        " | ".join(f"{k} {v:.2f} s" for k, v in seconds.items()) + f" | total {total:.2f} s over {args.batches} batches"
        f" (generation {100 * seconds['generation'] / total:.0f}%); process: system {usage.ru_stime:.1f} s, "
        f"peak RSS {usage.ru_maxrss / 1024:.0f} MB, {usage.ru_minflt} minor page faults"
    )


if __name__ == "__main__":
    main()
