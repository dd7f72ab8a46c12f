"""Field-level credit (``skinflow.rl.credit``): the per-token advantages against a plain loop, what they reduce
to, the token -> caption line map on the real tokenizer, and ``credit: field`` in ``GRPOStage``."""

import lightning as L
import pytest
import torch

from skinflow.data.formats import CAPTION_FIELDS, Target, caption_line_spans, parse_caption, render_caption
from skinflow.rl.credit import completion_token_fields, field_token_advantages, tied_field_groups, token_char_ends
from skinflow.rl.grpo import group_advantages
from skinflow.rl.rewards import RewardSpec, caption_field_scores, caption_fields_reward

B, G, T, F = 3, 5, 7, len(CAPTION_FIELDS)


def plain_loop(total, scores, weight, token_field):
    """The module docstring's formula, one token at a time."""
    out = torch.zeros(token_field.shape)
    for b in range(B):
        fields = [f for f in range(F) if not scores[b, 0, f].isnan()]
        for i in range(G):
            terms = {f: weight * (scores[b, i, f] - scores[b, :, f].mean()) / len(fields) for f in fields}
            rest = (total[b, i] - total[b].mean()) - sum(terms.values())
            written = {int(f) for f in token_field[b, i] if f >= 0}
            unwritten = sum(v for f, v in terms.items() if f not in written)
            for t in range(T):
                own = terms.get(int(token_field[b, i, t]), 0.0)
                out[b, i, t] = rest + unwritten + own
    return out


def random_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = (torch.rand(B, G, F, generator=g) > 0.5).float()
    scores[0, :, 1] = float("nan")  # image 0's reference has no location
    scores[2, :, 4:] = float("nan")  # image 2's has only four fields
    other = torch.randn(B, G, generator=g)
    weight = 0.7
    total = weight * scores.nanmean(-1) + 0.3 * other
    token_field = torch.randint(-1, F, (B, G, T), generator=g)
    token_field[1, 0] = -1  # a completion without any caption line
    return total, scores, weight, token_field


def test_field_advantages_equal_a_plain_loop_on_odd_sizes():
    total, scores, weight, token_field = random_case()
    assert torch.allclose(field_token_advantages(total, scores, weight, token_field),
                          plain_loop(total, scores, weight, token_field), atol=1e-6)


def test_without_caption_lines_field_credit_is_sequence_credit():
    total, scores, weight, token_field = random_case(1)
    ours = field_token_advantages(total, scores, weight, torch.full_like(token_field, -1))
    assert torch.allclose(ours, group_advantages(total, "none").unsqueeze(-1).expand(B, G, T), atol=1e-6)


def test_a_line_is_credited_with_its_own_field_only():
    # two completions of one image, right on colour, each right on a different one of shape / size
    scores = torch.full((1, 2, F), 1.0)
    scores[0, 0, CAPTION_FIELDS.index("shape")] = 0.0
    scores[0, 1, CAPTION_FIELDS.index("size")] = 0.0
    total = scores.mean(-1)  # tied: sequence credit has nothing to say
    token_field = torch.tensor([[list(range(F)), list(range(F))]])  # one token per line
    adv = field_token_advantages(total, scores, 1.0, token_field)[0]  # (G, T)
    assert torch.equal(group_advantages(total, "none"), torch.zeros(1, 2))
    shape, size, colour = (CAPTION_FIELDS.index(k) for k in ("shape", "size", "colour"))
    assert adv[0, shape] < 0 < adv[1, shape] and adv[1, size] < 0 < adv[0, size]
    assert adv[:, colour].abs().max() == 0  # colour was right in both: no push from the other lines' luck
    assert not tied_field_groups(total, scores).item()


def test_a_missing_line_keeps_its_term_on_every_token():
    scores = torch.tensor([[[1.0] * F, [1.0] * (F - 1) + [0.0]]])  # the second lacks / got wrong the last field
    total = scores.mean(-1)
    token_field = torch.tensor([[list(range(F)), list(range(F - 1)) + [-1]]])  # and never wrote its line
    adv = field_token_advantages(total, scores, 1.0, token_field)[0]
    assert torch.allclose(adv[1], torch.full((F,), -0.5 / F))  # its term (-1/2 of 1/F) lands on every token
    assert torch.allclose(adv[0, :-1], torch.zeros(F - 1)) and adv[0, -1] > 0


def test_field_scores_average_to_the_caption_reward():
    texts = [render_caption({"colour": "red", "shape": "round", "size": "1-3 cm"}),
             "<caption>\ncolour: brown\nshape: round\n</caption>", "no caption at all"]
    reference = {"colour": "red", "shape": "round", "size": "1-3 cm", "border": "well-defined"}
    targets = [Target("psoriasis", "x", "y", caption=reference)] * 3
    scores = caption_field_scores(texts, targets)
    assert scores.shape == (3, F) and scores[:, CAPTION_FIELDS.index("location")].isnan().all()
    assert torch.allclose(scores.nanmean(-1), caption_fields_reward(texts, targets))
    free = caption_field_scores(texts[:1], [Target("psoriasis", "x", "y", caption={"text": "a red patch"})])
    assert free.isnan().all()


@pytest.mark.parametrize("text", [
    render_caption({"colour": "red", "location": "left knee", "shape": "round", "lesion type": "plaque"}),
    "preamble <caption>\nColour : red\ncolour: blue\nnonsense\nsize: 1-3 cm</caption> tail",
    "<caption>\nshape:\nshape: oval\n\n",
])
def test_caption_line_spans_hold_the_values_parse_caption_reads(text):
    fields, _ = parse_caption(text)
    spans = caption_line_spans(text)
    assert set(spans) == set(fields)
    for name, (a, b) in spans.items():
        assert parse_caption("<caption>\n" + text[a:b] + "</caption>")[0] == {name: fields[name]}


def test_tokens_map_to_their_caption_lines_on_the_tiny_tokenizer(tiny):
    tokenizer = tiny[1].tokenizer
    text = render_caption({"colour": "red", "location": "left knee", "shape": "round", "size": "1-3 cm"})
    ids = tokenizer(text + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    assert decode(ids) == text
    ends = token_char_ends(decode, ids)
    assert ends[-1] == len(text) and ends == sorted(ends)
    ids_t = torch.tensor([ids])
    fields = completion_token_fields(decode, ids_t, torch.ones_like(ids_t, dtype=torch.bool), [text])[0]
    starts = [0, *ends[:-1]]
    for name in ("colour", "location", "shape", "size"):
        a, b = caption_line_spans(text)[name]
        inside = [t for t, (s, e) in enumerate(zip(starts, ends)) if a <= s and e <= b and e > s]
        assert inside and all(fields[t] == CAPTION_FIELDS.index(name) for t in inside), name
    assert fields[0] == -1 and fields[-1] == -1  # the <caption> tag and the end-of-sequence token


def test_grpo_stage_refuses_field_credit_it_cannot_give():
    from skinflow.stages.grpo import GRPOStage

    with pytest.raises(ValueError, match="exactly one reward with field terms"):
        GRPOStage(rewards=[RewardSpec("ranked_diagnosis")], credit="field", advantage_scale="none")
    with pytest.raises(ValueError, match="advantage_scale='none'"):
        GRPOStage(rewards=[RewardSpec("caption_fields")], credit="field")
    with pytest.raises(ValueError, match="credit='token'"):
        GRPOStage(credit="token")


def test_grpo_stage_trains_with_field_credit(synth_dir, tmp_path):
    """The random tiny model never writes a caption, so its rollouts are swapped for captions that differ from
    the reference in one field each: every group then gets per-token advantages that differ along a completion."""
    import dataclasses

    from skinflow.stages.grpo import GRPOStage
    from tests.test_grpo_stage import datamodule, fit, trainable

    L.seed_everything(0)
    stage = GRPOStage(rewards=[RewardSpec("caption_fields"), RewardSpec("format", 0.2)], credit="field",
                      advantage_scale="none", max_new_tokens=48, lr=1e-3, beta=0.1, group_size=4)
    tokenizer = stage.processor.tokenizer
    sampled, seen = stage.rollout, []

    def captions(batch):
        rollout = sampled(batch)
        texts = []
        for target in batch["targets"]:
            for i in range(4):  # completion i gets field i wrong
                wrong = dict(target.caption, **{CAPTION_FIELDS[i]: "purple"})
                texts.append(render_caption(wrong))
        rows = [tokenizer(t + tokenizer.eos_token, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(map(len, rows))
        ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
        mask = torch.tensor([[t < len(r) for t in range(width)] for r in rows])
        return dataclasses.replace(rollout, completion_ids=ids, completion_mask=mask,
                                   clipped=torch.zeros(len(rows), dtype=torch.bool), texts=texts)

    real_advantages = stage.field_advantages
    stage.rollout = captions
    stage.field_advantages = lambda *a: seen.append(real_advantages(*a)) or seen[-1]
    before = trainable(stage)
    trainer = fit(stage, datamodule(synth_dir, tmp_path, prompt="caption"), steps=2)
    advantages, tied = seen[0]  # (B, G, T), (B,)
    assert advantages.shape[:2] == (2, 4) and not tied.any()  # every total is 7/8: sequence credit would see ties
    # completion 0 got colour wrong where the others got it right: its colour line -(3/4)/8, its location, shape and
    # lesion type lines (right where one peer each was wrong) +(1/4)/8, every other token 0
    values = {round(float(v), 6) for v in advantages[0, 0]}
    assert values == {-3 / 32, 1 / 32, 0.0}
    assert trainer.global_step == 2 and trainer.callback_metrics["rl/frac_zero_std_groups"] == 0.0
    assert any(not torch.equal(before[n], p) for n, p in trainable(stage).items())


def test_a_first_token_that_decodes_to_nothing_ends_at_offset_0():
    from skinflow.rl.credit import token_char_ends

    pieces = ["", "colour", ":", " red"]  # e.g. a special token the decoder drops
    assert token_char_ends(lambda ids: "".join(pieces[i] for i in ids), [0, 1, 2, 3]) == [0, 6, 7, 11]


def test_a_token_ending_where_a_line_starts_is_outside_that_line():
    """Tokens "<caption>\\n" | "colour:" | " red" | "\\n" | "</caption>": the tag token ends exactly where the colour
    line starts and belongs to no field; the padding after a completion's end is -1 too."""
    from skinflow.rl.credit import completion_token_fields, token_fields

    text = "<caption>\ncolour: red\n</caption>"
    ends = [10, 17, 21, 22, 32]
    colour = CAPTION_FIELDS.index("colour")
    assert token_fields(text, ends).tolist() == [-1, colour, colour, colour, -1]  # the line holds its newline
    pieces = ["<caption>\n", "colour:", " red", "\n", "</caption>"]
    ids, mask = torch.tensor([[0, 1, 2, 3, 4, 0, 0]]), torch.tensor([[True] * 5 + [False] * 2])
    out = completion_token_fields(lambda t: "".join(pieces[i] for i in t), ids, mask, [text])
    assert out.tolist() == [[-1, colour, colour, colour, -1, -1, -1]]


def test_a_reference_with_one_field_gives_that_field_its_whole_centred_term():
    """n = 1 reference field: the colour line's tokens get w (s - mean s); nothing is divided by a field count of 2."""
    from skinflow.rl.credit import field_token_advantages

    F = len(CAPTION_FIELDS)
    colour = CAPTION_FIELDS.index("colour")
    scores = torch.full((1, 2, F), float("nan"))
    scores[0, :, colour] = torch.tensor([1.0, 0.0])
    total = torch.tensor([[1.0, 0.0]])
    token_field = torch.tensor([[[colour, -1], [colour, -1]]])
    adv = field_token_advantages(total, scores, 1.0, token_field)
    assert torch.allclose(adv[0, :, 0], torch.tensor([0.5, -0.5]))  # the colour token: its own term, w (s - 0.5)
    assert torch.allclose(adv[0, :, 1], torch.tensor([0.0, 0.0]))  # outside every line: the rest, here 0


def test_field_ties_are_judged_per_image_with_the_given_tolerance():
    from skinflow.rl.credit import tied_field_groups

    F = len(CAPTION_FIELDS)
    total = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    scores = torch.zeros(2, 2, F)
    scores[1, 0, 0] = 0.4  # image 1's completions differ in field 0 by 0.4
    assert tied_field_groups(total, scores).tolist() == [True, False]
    assert tied_field_groups(total, scores, tol=0.5).tolist() == [True, True]
    assert tied_field_groups(torch.tensor([[1.0, 1.3], [1.0, 1.0]]), torch.zeros(2, 2, F), tol=0.5).tolist() == [True, True]
    assert tied_field_groups(torch.tensor([[1.0, 1.3], [1.0, 1.0]]), torch.zeros(2, 2, F)).tolist() == [False, True]


def test_token_fields_of_no_tokens_is_an_empty_index_tensor():
    """An empty completion maps to an empty long tensor: the field indices are used to gather, and a float tensor
    there fails (or, empty, silently changes the dtype of what it is concatenated with)."""
    from skinflow.rl.credit import token_fields

    out = token_fields("", [])
    assert out.dtype == torch.long and out.shape == (0,)


def test_field_advantages_keep_the_rewards_dtype():
    """Under bfloat16 rewards the per-token advantages stay bfloat16 (the extra no-field slot does not promote them
    to float32), and match the float32 computation to bfloat16's precision."""
    total, scores, weight, token_field = random_case(2)
    low = field_token_advantages(total.bfloat16(), scores.bfloat16(), weight, token_field)
    assert low.dtype == torch.bfloat16
    high = field_token_advantages(total, scores, weight, token_field)
    assert torch.allclose(low.float(), high, atol=0.05)


def test_field_scores_grade_controlled_vocabulary_exactly_and_free_values_by_overlap():
    """A controlled field (its reference one of the schema's words) scores 1 or 0, never the token overlap a
    near miss would get: 'dark red' for 'red' earns 0 on colour. A value outside the vocabulary is scored by F1."""
    from skinflow.rl.rewards import CONTROLLED

    colour = sorted(CONTROLLED["colour"])[0]
    target = Target(label="psoriasis", nine="", three="", fitzpatrick=1, md5hash="x",
                    caption={"colour": colour, "location": "left upper arm near elbow"}, differential=("psoriasis",))
    text = render_caption({"colour": f"dark {colour}", "location": "upper arm"})
    scores = caption_field_scores([text, render_caption({"colour": colour})], [target, target])
    c, loc = CAPTION_FIELDS.index("colour"), CAPTION_FIELDS.index("location")
    assert scores[0, c] == 0.0 and scores[1, c] == 1.0
    assert 0.0 < float(scores[0, loc]) < 1.0  # 'upper arm' overlaps the free-text location in part
