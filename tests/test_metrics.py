import math
import pickle

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, top_k_accuracy_score

from skinflow.data.formats import Target, parse_answer
from skinflow.data.ontology import ONTOLOGY, synonym_group
from skinflow.metrics.clinical import BySkinType, GradedScore, MalignantMissRate, TopK, clinical_metrics
from skinflow.metrics.grading import GradingSpec, credit_matrix, ranked_indices
from skinflow.rl.rewards import caption_fields_reward, format_reward, ranked_diagnosis_reward

N_LABELS = len(ONTOLOGY)
IDENTITY = GradingSpec(exact=1.0, synonym=0.0, nine=0.0, three=0.0)


def random_ranked(n, k=6, seed=0, empty=0.0):
    rng = np.random.default_rng(seed)
    preds = np.stack([rng.choice(N_LABELS, size=k, replace=False) for _ in range(n)])
    target = np.where(rng.random(n) < 0.4, preds[:, rng.integers(0, k)], rng.integers(0, N_LABELS, n))
    if empty:
        preds[rng.random((n, k)) < empty] = -1
    return torch.tensor(preds), torch.tensor(target)


def test_identity_credit_top1_equals_sklearn_accuracy():
    preds, target = random_ranked(97, seed=1)
    metric = GradedScore(1, IDENTITY)
    metric.update(preds, target)
    assert metric.compute().item() == pytest.approx(accuracy_score(target, preds[:, 0]))
    assert TopK(1)(preds, target).item() == pytest.approx(accuracy_score(target, preds[:, 0]))


@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_topk_equals_sklearn_top_k_accuracy(k):
    preds, target = random_ranked(101, seed=k)
    scores = np.zeros((len(preds), N_LABELS))
    for row, ranked in enumerate(preds.numpy()):
        scores[row, ranked] = np.arange(6, 0, -1)  # earlier rank, higher score
    expected = top_k_accuracy_score(target.numpy(), scores, k=k, labels=np.arange(N_LABELS))
    assert TopK(k)(preds, target).item() == pytest.approx(expected)


def numpy_graded(preds, target, credit, k):
    out = []
    for ranked, t in zip(preds.numpy(), target.numpy()):
        best = 0.0
        for r, p in enumerate(ranked[:k], start=1):
            if p >= 0:
                best = max(best, credit[t, p] / np.log2(r + 1))
        out.append(best)
    return float(np.mean(out))


@pytest.mark.parametrize("k", [1, 3, 6])
def test_graded_score_equals_a_numpy_loop(k):
    preds, target = random_ranked(83, seed=10 + k, empty=0.2)
    credit = credit_matrix(GradingSpec()).numpy()
    assert GradedScore(k)(preds, target).item() == pytest.approx(numpy_graded(preds, target, credit, k), rel=1e-6)


def test_chunked_updates_forward_and_pickle():
    preds, target = random_ranked(60, seed=3, empty=0.1)
    for make in (lambda: TopK(3, "nine"), lambda: GradedScore(6), lambda: MalignantMissRate(1)):
        whole, chunked = make(), make()
        whole.update(preds, target)
        for a, b in ((0, 7), (7, 31), (31, 60)):
            chunked.update(preds[a:b], target[a:b])
        assert torch.allclose(whole.compute(), chunked.compute())
        fresh = make()
        batch_value = fresh(preds[:20], target[:20])
        reference = make()
        reference.update(preds[:20], target[:20])
        assert torch.allclose(batch_value, reference.compute())
        clone = pickle.loads(pickle.dumps(whole))
        assert torch.allclose(clone.compute(), whole.compute())


def test_unknown_skin_type_rows_do_not_change_stratified_values():
    preds, target = random_ranked(50, seed=4)
    fst = torch.tensor(np.random.default_rng(4).integers(1, 7, 50))
    a, b = BySkinType(lambda: GradedScore(1)), BySkinType(lambda: GradedScore(1))
    a.update(preds, target, fst)
    extra_preds, extra_target = random_ranked(30, seed=5)
    b.update(torch.cat([preds, extra_preds]), torch.cat([target, extra_target]), torch.cat([fst, torch.full((30,), -1)]))
    va, vb = a.compute(), b.compute()
    assert va.keys() == vb.keys() and all(torch.equal(va[k], vb[k]) for k in va)
    per_type = [va[f"fst_{t}"] for t in range(1, 7)]
    assert va["worst"] == min(per_type) and va["gap"] == pytest.approx((max(per_type) - min(per_type)).item())


def target(label, caption=None):
    return Target(label, ONTOLOGY.nine(label), ONTOLOGY.three(label), caption=caption)


# (case, completion, reference, graded top-1, graded top-6, malignant miss at top-1, ranked_diagnosis, format)
CASES = [
    ("exact", "<answer>\n1. melanoma\n</answer>", "melanoma", 1.0, 1.0, 0.0, 1.0, 1.0),
    ("synonym", "<answer>\n1. malignant melanoma\n</answer>", "melanoma", 1.0, 1.0, 0.0, 1.0, 1.0),
    ("sibling (same nine-group)", "<answer>\n1. dermatofibroma\n</answer>", "pyogenic granuloma", 0.5, 0.5, None, 0.5, 1.0),
    ("cousin (same three-class)", "<answer>\n1. milia\n</answer>", "pyogenic granuloma", 0.25, 0.25, None, 0.25, 1.0),
    ("wrong partition, exact at rank 2", "<answer>\n1. psoriasis\n2. pyogenic granuloma\n</answer>", "pyogenic granuloma", 0.0, 1 / np.log2(3), None, 1 / np.log2(3), 1.0),
    ("dangerous miss", "<answer>\n1. nevocytic nevus\n2. melanoma\n</answer>", "melanoma", 0.0, 1 / np.log2(3), 1.0, 1 / np.log2(3) - 0.5, 1.0),
    ("empty", "", "melanoma", 0.0, 0.0, 1.0, -0.5, 0.0),
    ("junk", "\x00\xff<answer>\nasdf qwer\n</answer>", "psoriasis", 0.0, 0.0, None, -0.25, 2 / 3),
    ("duplicate entries", "<answer>\n1. psoriasis\n2. Psoriasis\n3. psoriasis\n</answer>", "psoriasis", 1.0, 1.0, None, 1.0, 1.0),
    # unknown entries are dropped before ranking (scored in the 114-label space), so psoriasis is rank 1
    ("out-of-ontology entry", "<answer>\n1. molluscum\n2. psoriasis\n</answer>", "psoriasis", 1.0, 1.0, None, 1.0 - 0.25 * 0.5, (1 + 1 + 0.5) / 3),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hand_worked_cases(case):
    name, text, label, graded1, graded6, miss, reward, fmt = case
    preds = ranked_indices([parse_answer(text)])
    ref = torch.tensor([ONTOLOGY.index(label)])
    assert GradedScore(1)(preds, ref).item() == pytest.approx(graded1)
    assert GradedScore(6)(preds, ref).item() == pytest.approx(graded6)
    miss_metric = MalignantMissRate(1)
    miss_metric.update(preds, ref)
    if miss is None:
        assert not ONTOLOGY.is_malignant(label) and miss_metric.count == 0
    else:
        assert miss_metric.compute().item() == miss
    assert ranked_diagnosis_reward([text], [target(label)]).item() == pytest.approx(reward)
    assert format_reward([text], [target(label)]).item() == pytest.approx(fmt)


def test_synonym_and_exact_differ_only_for_exact_topk():
    preds = ranked_indices([parse_answer("<answer>\n1. granuloma pyogenic\n</answer>")])
    ref = torch.tensor([ONTOLOGY.index("pyogenic granuloma")])
    assert TopK(1, "exact")(preds, ref).item() == 0.0
    assert TopK(1, "nine")(preds, ref).item() == 1.0
    assert "granuloma pyogenic" in synonym_group("pyogenic granuloma")


def test_caption_fields_reward():
    caption = {"colour": "red", "shape": "round", "surface": "scaly, silvery"}
    perfect = "<caption>\ncolour: red\nshape: round\nsurface: scaly, silvery\n</caption>"
    half = "<caption>\ncolour: red\nshape: annular\nsurface: silvery\n</caption>"
    scores = caption_fields_reward([perfect, half, "nothing"], [target("psoriasis", caption)] * 3)
    # colour exact 1, shape controlled mismatch 0, surface free text F1({silvery},{scaly, silvery}) = 2/3
    assert scores.tolist() == pytest.approx([1.0, (1 + 0 + 2 / 3) / 3, 0.0])
    assert caption_fields_reward([perfect], [target("psoriasis")]).item() == 0.0


def test_collection_has_every_level_and_k():
    names = set(clinical_metrics())
    assert {f"top{k}_{level}" for k in range(1, 7) for level in ("exact", "nine", "three")} <= names
    assert {"graded_top1", "graded_top6", "malignant_miss_top1", "malignant_miss_top6", "graded_top1_by_fst"} <= names


def test_combined_reward_weights_and_rejects_unknown_names():
    from skinflow.rl.rewards import RewardSpec, combined_reward

    texts = ["<answer>\n1. melanoma\n</answer>", "nothing"]
    refs = [target("melanoma"), target("melanoma")]
    out = combined_reward(texts, refs, [RewardSpec("ranked_diagnosis", 2.0), RewardSpec("format", 0.5)])
    assert out["total"].tolist() == pytest.approx([2.0 * 1.0 + 0.5 * 1.0, 2.0 * -0.5 + 0.5 * 0.0])
    with pytest.raises(ValueError, match="unknown rewards"):
        combined_reward(texts, refs, [RewardSpec("vibes")])


def test_reward_options_reach_the_reward_function():
    from skinflow.rl.rewards import RewardSpec, combined_reward

    texts = ["<answer>\n1. nevocytic nevus\n2. melanoma\n3. not a disease\n</answer>"]
    refs = [target("melanoma")]
    default = combined_reward(texts, refs, [RewardSpec("ranked_diagnosis")])["total"].item()
    lenient = combined_reward(texts, refs, [RewardSpec("ranked_diagnosis", options={"safety_penalty": 0.0})])["total"].item()
    # melanoma at rank 2 (credit 1 x 1/log2(3)); dangerous miss at rank 1; one of three entries unknown
    assert lenient == pytest.approx(1 / math.log2(3) - 0.25 / 3, rel=1e-5)
    assert default == pytest.approx(lenient - 0.5, rel=1e-5)


def test_malignant_miss_at_k_looks_at_the_first_k_answers_only():
    """A malignant reference is missed at k when none of the first k answers is malignant: at k = 1 a benign first
    answer misses, at k = 2 a malignant second answer saves it, an empty slot never counts as malignant, and a
    benign reference is never a miss. Label index 0 is among the answers (an index clamp would move it)."""
    from skinflow.metrics.grading import EMPTY, malignant_miss

    idx = ONTOLOGY.index
    benign, malignant = idx("seborrheic keratosis"), idx("basal cell carcinoma")
    first = ONTOLOGY.labels[0]
    preds = torch.tensor([[benign, malignant, EMPTY], [benign, EMPTY, benign], [malignant, benign, benign],
                          [0, EMPTY, EMPTY], [benign, benign, benign]])
    target = torch.tensor([idx("melanoma")] * 4 + [idx("psoriasis")])
    assert malignant_miss(preds, target, 1).tolist() == [True, True, False, not ONTOLOGY.is_malignant(first), False]
    assert malignant_miss(preds, target, 2).tolist() == [False, True, False, not ONTOLOGY.is_malignant(first), False]
    assert malignant_miss(preds, target, 3).tolist() == [False, True, False, not ONTOLOGY.is_malignant(first), False]


def test_group_hits_need_an_answer_in_the_references_group():
    """nine/three-level hits: an answer in another group is no hit however many answers there are; an answer in
    the same group (another label) is; empty slots are never hits. Index 0 answers its own group."""
    from skinflow.metrics.grading import EMPTY, level_hits

    idx = ONTOLOGY.index
    ref = idx("melanoma")
    same_nine = next(l for l in ONTOLOGY.labels if ONTOLOGY.nine(l) == ONTOLOGY.nine("melanoma") and l != "melanoma")
    other = next(l for l in ONTOLOGY.labels if ONTOLOGY.three(l) != ONTOLOGY.three("melanoma"))
    preds = torch.tensor([[idx(other), idx(other), EMPTY], [idx(other), idx(same_nine), EMPTY], [EMPTY, EMPTY, EMPTY]])
    target = torch.tensor([ref, ref, ref])
    assert level_hits(preds, target, 3, "nine").tolist() == [False, True, False]
    assert level_hits(preds, target, 1, "nine").tolist() == [False, False, False]
    assert level_hits(preds, target, 3, "exact").tolist() == [False, False, False]
    zero = ONTOLOGY.labels[0]
    peer = next(l for l in ONTOLOGY.labels if ONTOLOGY.nine(l) == ONTOLOGY.nine(zero) and l != zero)
    assert level_hits(torch.tensor([[0]]), torch.tensor([idx(peer)]), 1, "nine").tolist() == [True]
    outsider = next(l for l in ONTOLOGY.labels if ONTOLOGY.nine(l) != ONTOLOGY.nine(zero))
    assert level_hits(torch.tensor([[0]]), torch.tensor([idx(outsider)]), 1, "nine").tolist() == [False]


def test_credit_of_label_index_0_is_its_own_full_credit():
    from skinflow.metrics.grading import ranked_credit

    credit = credit_matrix()
    assert ranked_credit(torch.tensor([[0]]), torch.tensor([0]), credit).item() == 1.0


def test_controlled_caption_fields_score_exact_matches_only():
    """A controlled-vocabulary field (shape, colour, ...) scores 1 for the reference value and 0 for anything else,
    even a value sharing words with it; a free-text field gets token-set F1."""
    from skinflow.rl.rewards import field_agreement

    assert field_agreement("shape", "Round", "round") == 1.0
    assert field_agreement("shape", "round annular", "round") == 0.0  # token F1 would give 2/3
    assert field_agreement("size", "<1 cm", "1-3 cm") == 0.0  # F1 over tokens would credit "cm"
    assert field_agreement("surface", "scaly plaques", "scaly") == 0.0
    assert field_agreement("surface", "scaly and silvery", "scaly, silvery") == pytest.approx(0.8)  # free text
    assert field_agreement("shape", None, "round") == 0.0


def test_reward_ranges_are_tight_and_registration_stores_the_function():
    """The documented ranges are reached: a perfect answer scores the top (1, not more), the worst ranked answer
    (a dangerous miss with an unknown name) the bottom; a reward registered by name is that function."""
    from skinflow.rl.rewards import REWARDS, ranked_diagnosis_reward, register, reward_range

    assert reward_range("ranked_diagnosis") == (-0.75, 1.0) and reward_range("format") == (0.0, 1.0)
    perfect = "<answer>\n1. melanoma\n</answer>"
    assert ranked_diagnosis_reward([perfect], [target("melanoma")]).item() == pytest.approx(reward_range("ranked_diagnosis")[1])

    def mine(completions, targets):
        return torch.zeros(len(completions))

    try:
        assert register("test_registry")(mine) is mine and REWARDS["test_registry"] is mine
    finally:
        REWARDS.pop("test_registry", None)


def test_a_field_outside_the_controlled_vocabularies_is_scored_by_token_f1():
    from skinflow.rl.rewards import field_agreement

    assert field_agreement("notes", "red scaly", "red") == pytest.approx(2 / 3)


def test_every_metric_of_the_collection_computes_its_own_definition():
    """Each logged metric of the stages' collection, updated in two chunks, equals its definition computed here
    from the grading functions on the whole batch: the right k, level, grading and reference subset for each name;
    the per-skin-type worst is the lowest value for a score and the highest for a miss rate; with no sample a
    metric is NaN (the stages then log nothing)."""
    from skinflow.metrics.grading import graded_score, level_hits, malignant_mask, malignant_miss

    torch.manual_seed(0)
    n = 40
    target = torch.randint(0, len(ONTOLOGY.labels), (n,))
    preds = torch.randint(0, len(ONTOLOGY.labels), (n, 6))
    preds[:8] = target[:8, None]  # some exact hits
    preds[5:10, 3:] = -1  # and empty ranks
    fitz = torch.tensor([1, 2, 3, 4, 5, 6, -1, 2] * 5)
    spec = GradingSpec()
    credit = credit_matrix(spec)
    collection = clinical_metrics(spec)
    for rows in (slice(0, 17), slice(17, n)):
        for metric in collection.values():
            args = (preds[rows], target[rows], fitz[rows]) if isinstance(metric, BySkinType) else (preds[rows], target[rows])
            metric.update(*args)
    malignant = malignant_mask()[target]
    expected = {f"top{k}_{level}": level_hits(preds, target, k, level).float().mean()
                for level in ("exact", "nine", "three") for k in range(1, 7)}
    expected.update({"graded_top1": graded_score(preds, target, credit, 1).mean(),
                     "graded_top6": graded_score(preds, target, credit, 6).mean(),
                     "malignant_miss_top1": malignant_miss(preds, target, 1)[malignant].float().mean(),
                     "malignant_miss_top6": malignant_miss(preds, target, 6)[malignant].float().mean()})
    assert set(expected) | {"graded_top1_by_fst", "top1_exact_by_fst"} == set(collection)
    for name, value in expected.items():
        assert collection[name].compute().item() == pytest.approx(value.item(), abs=1e-6), name
    by_type = collection["graded_top1_by_fst"].compute()
    per_type = [graded_score(preds[fitz == t], target[fitz == t], credit, 1).mean() for t in range(1, 7)]
    assert [by_type[f"fst_{t}"].item() for t in range(1, 7)] == pytest.approx([v.item() for v in per_type], abs=1e-6)
    assert by_type["worst"].item() == pytest.approx(min(v.item() for v in per_type), abs=1e-6)
    misses = BySkinType(lambda: MalignantMissRate(1))
    misses.update(preds, target, fitz)
    rates = [v for k, v in misses.compute().items() if k.startswith("fst_") and not torch.isnan(v)]
    assert misses.compute()["worst"].item() == pytest.approx(max(v.item() for v in rates))
    assert torch.isnan(TopK(1).compute()) and torch.isnan(MalignantMissRate(1).compute())
    with pytest.raises(Exception, match="level must be exact, nine or three, not 'ten'"):
        TopK(1, "ten")


def collection_data(n=300, seed=11):
    """Ranked answers where top-1 and top-2 differ in outcome often, a third of references malignant, skin types 1-6."""
    from skinflow.metrics.grading import malignant_mask

    preds, target = random_ranked(n, seed=seed)
    malignant = torch.nonzero(malignant_mask()).flatten()
    rng = np.random.default_rng(seed)
    pick = torch.tensor(rng.random(n) < 0.35)
    target = torch.where(pick, malignant[torch.tensor(rng.integers(0, len(malignant), n))], target)
    fitzpatrick = torch.tensor(rng.integers(1, 7, n))
    return preds, target, fitzpatrick


def test_every_collection_metric_is_its_stated_definition_under_a_non_default_grading():
    """Each logged name computes what it says: its k, its level, the grading it was given (not the default), the
    malignant references only; per skin type over that type's rows. A wrong k or a dropped grading changes a value."""
    from skinflow.metrics.grading import graded_score, level_hits, malignant_mask, malignant_miss

    grading = GradingSpec(exact=1.0, synonym=0.3, nine=0.2, three=0.1)
    preds, target, fitzpatrick = collection_data()
    credit = credit_matrix(grading)
    malignant = malignant_mask()[target]
    assert (malignant_miss(preds, target, 1) != malignant_miss(preds, target, 2))[malignant].any()  # k matters here
    assert not torch.equal(graded_score(preds, target, credit, 1), graded_score(preds, target, credit_matrix(GradingSpec()), 1))
    expected = {f"top{k}_{level}": level_hits(preds, target, k, level).float().mean()
                for level in ("exact", "nine", "three") for k in range(1, 7)}
    expected |= {f"graded_top{k}": graded_score(preds, target, credit, k).double().mean() for k in (1, 6)}
    expected |= {f"malignant_miss_top{k}": malignant_miss(preds, target, k)[malignant].float().mean() for k in (1, 6)}
    collection = clinical_metrics(grading)
    for name, metric in collection.items():
        if isinstance(metric, BySkinType):
            metric.update(preds, target, fitzpatrick)
            for t in range(1, 7):
                rows = fitzpatrick == t
                want = (graded_score(preds[rows], target[rows], credit, 1).double().mean() if name == "graded_top1_by_fst"
                        else level_hits(preds[rows], target[rows], 1, "exact").float().mean())
                assert metric.compute()[f"fst_{t}"].item() == pytest.approx(want.item(), abs=1e-6), (name, t)
        else:
            metric.update(preds, target)
            assert metric.compute().item() == pytest.approx(expected[name].item(), abs=1e-6), name
    assert {n for n in collection if not n.endswith("_by_fst")} == set(expected)


def test_defaults_are_top1_exact_and_the_first_answer():
    preds, target, _ = collection_data(seed=12)
    assert TopK()(preds, target).item() == TopK(1, "exact")(preds, target).item() != TopK(2, "exact")(preds, target).item()
    assert MalignantMissRate()(preds, target).item() == MalignantMissRate(1)(preds, target).item() \
        != MalignantMissRate(2)(preds, target).item()
    assert GradedScore()(preds, target).item() == GradedScore(1, GradingSpec())(preds, target).item() \
        != GradedScore(2, GradingSpec())(preds, target).item()


def test_metrics_merge_across_processes_by_summing_their_states():
    """What DDP's sync does (torchmetrics' merge_state uses the same reductions): two halves merged equal the whole."""
    preds, target, _ = collection_data(seed=13)
    for make in (lambda: TopK(3, "nine"), lambda: GradedScore(6, GradingSpec()), lambda: MalignantMissRate(1)):
        whole, left, right = make(), make(), make()
        whole.update(preds, target)
        left.update(preds[:100], target[:100])
        right.update(preds[100:], target[100:])
        left.merge_state(right)
        assert left.compute().item() == pytest.approx(whole.compute().item(), abs=1e-7)


def test_a_mean_over_many_batches_keeps_float64_precision():
    """Thousands of evaluation batches: the sums are kept in float64, so the mean is exact to 1e-12 of the float64
    mean (float32 sums drift by ~1e-6 here)."""
    metric = TopK(1, "exact")
    values = torch.tensor([1 / 3] * 7, dtype=torch.float32)
    metric.values = lambda preds, target: (values, torch.ones(7, dtype=torch.bool))
    for _ in range(20000):
        metric.update(None, None)
    exact = values.double().sum().item() * 20000 / (7 * 20000)
    assert abs(metric.total.item() / metric.count.item() - exact) < 1e-12


def test_the_credit_matrix_is_not_part_of_a_checkpoint():
    """The grading comes from the config, not from an old checkpoint: the 114 x 114 credit buffer is not saved."""
    assert "credit" not in GradedScore(1, IDENTITY).state_dict()
    assert "credit" not in clinical_metrics(IDENTITY).state_dict() and not any(
        k.endswith("credit") for k in clinical_metrics(IDENTITY).state_dict())
