/* Compiled twins of the hot loops of the core; each Python original stays the reference (and
   the fallback when this module is not built), and the tests hold the two equal.

   read_canonical(text, spec) -> {key: DimensionOutput}             (profile_format.ProfileParser)
   fold(choices, best, pairs, outputs, sample_idx, malformed) -> None (tally._fold)
   fold_canonical(text, spec, choices, best, pairs, sample_idx) -> bool
                   (the reference: tally._fold of the parser's outputs, in one pass; without
                    this module tally._fold_canonical reads nothing and the reference runs)
   winner(choices, rank, by_count) -> (tag, S, count, margin, n_valid) or None (voting._winner)

   spec is built once per taxonomy by profile_format.ProfileParser:
       (DimensionOutput, ((key, "<key>", "</key>", lookup), ...))
   with lookup the taxonomy's exact {label or alias: canonical label}. The answer (the text
   after the last "</think>", up to an unclosed "<think>" after it, as profile_format.answer_text
   cuts it) is canonical as a whole when its only '<' are those of its blocks, which come in
   taxonomy order, each reading
       <key><evidence>E</evidence><tag>T</tag><score>D</score></key>
   with T found in lookup and D a digit 1..5; the result is then what the general rules give.
   Otherwise read_canonical reads each dimension whose block alone is canonical and returns None
   for the others, which the caller reads with the general rules, and fold_canonical reads
   nothing. One forward pass from '<' to '<', so linear; never raises on a str. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *THINK_OPEN;     /* "<think>" */
static PyObject *THINK_CLOSE;    /* "</think>" */
static PyObject *EVIDENCE_OPEN;  /* "<evidence>" */
static PyObject *EVIDENCE_TAG;   /* "</evidence><tag>" */
static PyObject *TAG_SCORE;      /* "</tag><score>" */
static PyObject *SCORE_CLOSE;    /* "</score>" */

/* Position of the first '<' in text[from:end], or -1. */
static Py_ssize_t
next_lt(int kind, const void *data, Py_ssize_t from, Py_ssize_t end)
{
    if (from >= end)
        return -1;
    if (kind == PyUnicode_1BYTE_KIND) {
        const char *base = (const char *)data;
        const char *hit = memchr(base + from, '<', (size_t)(end - from));
        return hit == NULL ? -1 : hit - base;
    }
    for (Py_ssize_t i = from; i < end; i++)
        if (PyUnicode_READ(kind, data, i) == '<')
            return i;
    return -1;
}

/* Whether the next '<' at or after from is at exactly `at` and starts literal, within text[:end]. */
static int
literal_at(PyObject *text, int kind, const void *data, Py_ssize_t from, Py_ssize_t end, PyObject *literal, Py_ssize_t at)
{
    Py_ssize_t lit_len = PyUnicode_GET_LENGTH(literal);
    return next_lt(kind, data, from, end) == at && at + lit_len <= end
           && PyUnicode_Tailmatch(text, literal, at, at + lit_len, -1) == 1;
}

/* Like literal_at, wherever the next '<' is; its position in *at. */
static int
next_is(PyObject *text, int kind, const void *data, Py_ssize_t from, Py_ssize_t end, PyObject *literal, Py_ssize_t *at)
{
    *at = next_lt(kind, data, from, end);
    return *at >= 0 && literal_at(text, kind, data, *at, end, literal, *at);
}

/* Narrows [*a, *b) of text to its content stripped of whitespace as str.strip() defines it. */
static void
strip_bounds(int kind, const void *data, Py_ssize_t *a, Py_ssize_t *b)
{
    while (*a < *b && Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, *a)))
        (*a)++;
    while (*b > *a && Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, *b - 1)))
        (*b)--;
}

/* What a canonical block inside holds, as positions: nothing is allocated until it is used. */
typedef struct {
    PyObject *tag;               /* the canonical label, borrowed from the lookup */
    long level;                  /* the score digit, 1..5 */
    Py_ssize_t ev_start, ev_end; /* the evidence, stripped */
    Py_ssize_t after;            /* the position after "</score>" */
} Inner;

/* Whether text[start:end] begins with "<evidence>E</evidence><tag>T</tag><score>D</score>" with
   no other '<', T a key of lookup and D a digit 1..5: 1 (and *in filled), 0 when not, -1 with
   an exception set. */
static int
scan_inner(PyObject *text, int kind, const void *data, Py_ssize_t start, Py_ssize_t end, PyObject *lookup, Inner *in)
{
    Py_ssize_t ev_start, ev_end, tag_start, tag_end, score_end;
    PyObject *raw;
    Py_UCS4 digit;

    if (!literal_at(text, kind, data, start, end, EVIDENCE_OPEN, start))
        return 0;
    ev_start = start + PyUnicode_GET_LENGTH(EVIDENCE_OPEN);
    if (!next_is(text, kind, data, ev_start, end, EVIDENCE_TAG, &ev_end))
        return 0;
    tag_start = ev_end + PyUnicode_GET_LENGTH(EVIDENCE_TAG);
    if (!next_is(text, kind, data, tag_start, end, TAG_SCORE, &tag_end))
        return 0;
    score_end = tag_end + PyUnicode_GET_LENGTH(TAG_SCORE) + 1;
    if (!literal_at(text, kind, data, score_end - 1, end, SCORE_CLOSE, score_end))
        return 0;
    digit = PyUnicode_READ(kind, data, score_end - 1);
    if (digit < '1' || digit > '5')
        return 0;

    raw = PyUnicode_Substring(text, tag_start, tag_end);
    if (raw == NULL)
        return -1;
    in->tag = PyDict_GetItemWithError(lookup, raw);
    Py_DECREF(raw);
    if (in->tag == NULL)
        return PyErr_Occurred() ? -1 : 0;
    in->level = (long)(digit - '0');
    in->ev_start = ev_start;
    in->ev_end = ev_end;
    strip_bounds(kind, data, &in->ev_start, &in->ev_end);
    in->after = score_end + PyUnicode_GET_LENGTH(SCORE_CLOSE);
    return 1;
}

/* A cls (tag, score, evidence, None) instance of a scanned inside; NULL with an exception set. */
static PyObject *
make_output(PyTypeObject *cls, PyObject *text, const Inner *in)
{
    PyObject *out = cls->tp_alloc(cls, 4);
    PyObject *score = PyLong_FromLong(in->level);
    PyObject *evidence = PyUnicode_Substring(text, in->ev_start, in->ev_end);

    if (out == NULL || score == NULL || evidence == NULL) {
        Py_XDECREF(out);
        Py_XDECREF(score);
        Py_XDECREF(evidence);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 0, Py_NewRef(in->tag));
    PyTuple_SET_ITEM(out, 1, score);
    PyTuple_SET_ITEM(out, 2, evidence);
    PyTuple_SET_ITEM(out, 3, Py_NewRef(Py_None));
    return out;
}

/* One dimension on its own, for an answer that is not canonical as a whole: its "<key>" and
   "</key>" must each occur once in text[pos:end] (counted as the general rules count them),
   in that order, around exactly one canonical inside. Py_None when not (new reference). */
static PyObject *
read_block(PyObject *text, int kind, const void *data, Py_ssize_t pos, Py_ssize_t end, PyObject *open_tag,
           PyObject *close_tag, PyObject *lookup, PyTypeObject *cls)
{
    Py_ssize_t n_open, n_close, start, stop;
    Inner in;
    int ok;

    n_open = PyUnicode_Count(text, open_tag, pos, end);
    if (n_open != 1)
        return n_open < 0 ? NULL : Py_NewRef(Py_None);
    n_close = PyUnicode_Count(text, close_tag, pos, end);
    if (n_close != 1)
        return n_close < 0 ? NULL : Py_NewRef(Py_None);
    start = PyUnicode_Find(text, open_tag, pos, end, 1) + PyUnicode_GET_LENGTH(open_tag);
    stop = PyUnicode_Find(text, close_tag, start, end, 1);
    if (stop < 0)
        return stop == -2 ? NULL : Py_NewRef(Py_None);
    ok = scan_inner(text, kind, data, start, stop, lookup, &in);
    if (ok < 0)
        return NULL;
    if (!ok || in.after != stop)
        return Py_NewRef(Py_None);
    return make_output(cls, text, &in);
}

/* The bounds of the answer in text, reasoning cut off as answer_text does: after the last
   "</think>" (if any), up to the first "<think>" after that (if any). 0, or -1 with an
   exception set. */
static int
answer_span(PyObject *text, Py_ssize_t *start, Py_ssize_t *end)
{
    Py_ssize_t len = PyUnicode_GET_LENGTH(text), cut;

    *start = 0;
    *end = len;
    cut = PyUnicode_Find(text, THINK_CLOSE, 0, len, -1);
    if (cut >= 0)
        *start = cut + PyUnicode_GET_LENGTH(THINK_CLOSE);
    if (cut != -2)
        cut = PyUnicode_Find(text, THINK_OPEN, *start, len, 1);
    if (cut >= 0)
        *end = cut;
    return cut == -2 ? -1 : 0;
}

/* Taxonomies with more dimensions than this are read dimension by dimension (same results). */
#define MAX_WHOLE 64

/* The blocks of text[start:end] when they come in taxonomy order with no other '<', each
   canonical, into ins[0..n_dims): 1 when the answer is canonical as a whole, 0 when not, -1
   with an exception set. */
static int
scan_whole(PyObject *text, int kind, const void *data, Py_ssize_t start, Py_ssize_t end, PyObject *dims, Inner *ins)
{
    Py_ssize_t pos = start, n_dims = PyTuple_GET_SIZE(dims);

    if (n_dims > MAX_WHOLE)
        return 0;
    for (Py_ssize_t i = 0; i < n_dims; i++) {
        PyObject *dim = PyTuple_GET_ITEM(dims, i);
        PyObject *open_tag = PyTuple_GET_ITEM(dim, 1), *close_tag = PyTuple_GET_ITEM(dim, 2);
        Py_ssize_t at;
        int ok;

        if (!next_is(text, kind, data, pos, end, open_tag, &at))
            return PyErr_Occurred() ? -1 : 0;
        ok = scan_inner(text, kind, data, at + PyUnicode_GET_LENGTH(open_tag), end, PyTuple_GET_ITEM(dim, 3), &ins[i]);
        if (ok <= 0)
            return ok;
        if (!literal_at(text, kind, data, ins[i].after, end, close_tag, ins[i].after))
            return PyErr_Occurred() ? -1 : 0;
        pos = ins[i].after + PyUnicode_GET_LENGTH(close_tag);
    }
    return next_lt(kind, data, pos, end) < 0;
}

/* Whether spec is (tuple subclass, ((key, opener, closer, lookup dict), ...)); else TypeError. */
static int
check_spec(PyObject *spec, const char *signature)
{
    PyObject *dims;

    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 2 || !PyType_Check(PyTuple_GET_ITEM(spec, 0))
        || !PyType_IsSubtype((PyTypeObject *)PyTuple_GET_ITEM(spec, 0), &PyTuple_Type)
        || !PyTuple_Check(PyTuple_GET_ITEM(spec, 1))) {
        PyErr_SetString(PyExc_TypeError, signature);
        return 0;
    }
    dims = PyTuple_GET_ITEM(spec, 1);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(dims); i++) {
        PyObject *dim = PyTuple_GET_ITEM(dims, i);
        if (!PyTuple_Check(dim) || PyTuple_GET_SIZE(dim) != 4 || !PyUnicode_Check(PyTuple_GET_ITEM(dim, 1))
            || !PyUnicode_Check(PyTuple_GET_ITEM(dim, 2)) || !PyDict_Check(PyTuple_GET_ITEM(dim, 3))) {
            PyErr_SetString(PyExc_TypeError, "each dimension of the spec must be (key, '<key>', '</key>', lookup dict)");
            return 0;
        }
    }
    return 1;
}

static PyObject *
read_canonical(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *text, *dims, *result;
    PyTypeObject *cls;
    Py_ssize_t n_dims, start, end;
    Inner ins[MAX_WHOLE];
    int kind, whole;
    const void *data;

    if (nargs != 2 || !PyUnicode_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "read_canonical(text: str, spec: (tuple subclass, tuple of dimensions))");
        return NULL;
    }
    if (!check_spec(args[1], "read_canonical(text: str, spec: (tuple subclass, tuple of dimensions))"))
        return NULL;
    text = args[0];
    cls = (PyTypeObject *)PyTuple_GET_ITEM(args[1], 0);
    dims = PyTuple_GET_ITEM(args[1], 1);
    n_dims = PyTuple_GET_SIZE(dims);
    kind = PyUnicode_KIND(text);
    data = PyUnicode_DATA(text);
    if (answer_span(text, &start, &end) < 0)
        return NULL;
    whole = scan_whole(text, kind, data, start, end, dims, ins);
    if (whole < 0)
        return NULL;

    result = PyDict_New();
    if (result == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n_dims; i++) {
        PyObject *dim = PyTuple_GET_ITEM(dims, i), *out;
        /* Canonical as a whole: every block as scanned. Else dimension by dimension, None where
           the general rules must decide. */
        out = whole ? make_output(cls, text, &ins[i])
                    : read_block(text, kind, data, start, end, PyTuple_GET_ITEM(dim, 1), PyTuple_GET_ITEM(dim, 2),
                                 PyTuple_GET_ITEM(dim, 3), cls);
        if (out == NULL || PyDict_SetItem(result, PyTuple_GET_ITEM(dim, 0), out) < 0) {
            Py_XDECREF(out);
            Py_DECREF(result);
            return NULL;
        }
        Py_DECREF(out);
    }
    return result;
}

/* item as a tuple of at least `need` items: itself when it is one, else converted (the slow way,
   for lists and other sequences). Steals item; NULL with an exception when that fails. */
static PyObject *
as_tuple(PyObject *item, Py_ssize_t need, const char *what)
{
    PyObject *seq;

    if (PyTuple_Check(item) && PyTuple_GET_SIZE(item) >= need)
        return item;
    seq = PySequence_Tuple(item);
    Py_DECREF(item);
    if (seq != NULL && PyTuple_GET_SIZE(seq) < need) {
        PyErr_SetString(PyExc_IndexError, what);
        Py_CLEAR(seq);
    }
    return seq;
}

/* A sample_idx as a C long whose negation is one too (entries hold -sample_idx); -1 with an
   exception set when it is out of that range. */
static long
sample_index(PyObject *value)
{
    long idx = PyLong_AsLong(value);

    if (idx == LONG_MIN) {
        PyErr_SetString(PyExc_OverflowError, "sample_idx out of range");
        return -1;
    }
    return idx;
}

/* Whether an entry (has_evidence, level, -sample_idx, ...) beats the one slot[tag] holds on its
   first three items (or slot holds none): 1, 0, or -1 with an exception set. */
static int
beats_held(PyObject *slot, PyObject *tag, int has_evidence, long level, long sample_idx)
{
    PyObject *held;
    long h0, h1, h2;

    if (!PyDict_Check(slot)) {
        PyErr_SetString(PyExc_TypeError, "best must hold one dict per dimension");
        return -1;
    }
    held = PyDict_GetItemWithError(slot, tag); /* borrowed */
    if (held == NULL)
        return PyErr_Occurred() ? -1 : 1;
    if (!PyTuple_Check(held) || PyTuple_GET_SIZE(held) != 4) {
        PyErr_SetString(PyExc_TypeError, "a held evidence entry must be a 4-tuple");
        return -1;
    }
    Py_INCREF(held); /* converting its items may run Python code that changes slot */
    h0 = PyLong_AsLong(PyTuple_GET_ITEM(held, 0));
    h1 = PyLong_AsLong(PyTuple_GET_ITEM(held, 1));
    h2 = PyLong_AsLong(PyTuple_GET_ITEM(held, 2));
    Py_DECREF(held);
    if (PyErr_Occurred())
        return -1;
    return has_evidence > h0 || (has_evidence == h0 && (level > h1 || (level == h1 && -sample_idx > h2)));
}

/* Stores the entry (has_evidence, score, -sample_idx, evidence) as slot[tag], the layout
   beats_held reads. 0, or -1 with an exception set. */
static int
hold_entry(PyObject *slot, PyObject *tag, int has_evidence, PyObject *score, long sample_idx, PyObject *evidence)
{
    PyObject *entry = Py_BuildValue("(OOlO)", has_evidence ? Py_True : Py_False, score, -sample_idx, evidence);
    int ok;

    if (entry == NULL)
        return -1;
    ok = PyDict_SetItem(slot, tag, entry);
    Py_DECREF(entry);
    return ok;
}

/* fold: one sample into a user's tally, as tally._fold does it in Python:
   for each dimension i (zip of choices, pairs and outputs): a malformed output (tag None)
   appends `malformed`; otherwise choices[i] gets pairs[i][tag][score] and, when best is not
   None, best[i][tag] becomes (has_evidence, score, -sample_idx, evidence) if that beats the
   held entry on its first three items. */
static PyObject *
fold(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *choices, *best, *pairs, *it, *out;
    long sample_idx;

    if (nargs != 6 || !PyList_Check(args[0]) || !(args[1] == Py_None || PyList_Check(args[1])) || !PyTuple_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "fold(choices: list, best: list | None, pairs: tuple, outputs, sample_idx: int, malformed)");
        return NULL;
    }
    choices = args[0];
    best = args[1];
    pairs = args[2];
    sample_idx = sample_index(args[4]);
    if (sample_idx == -1 && PyErr_Occurred())
        return NULL;
    it = PyObject_GetIter(args[3]);
    if (it == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(choices) && i < PyTuple_GET_SIZE(pairs)
                           && (best == Py_None || i < PyList_GET_SIZE(best)); i++) {
        PyObject *tag, *score, *row, *pair, *evidence, *slot;
        long level;
        int has_evidence, ok;

        out = PyIter_Next(it);
        if (out == NULL)
            break;
        out = as_tuple(out, 1, "fold: an output needs a tag");
        if (out == NULL)
            goto fail_it;
        tag = PyTuple_GET_ITEM(out, 0);
        if (tag == Py_None) {
            ok = PyList_Append(PyList_GET_ITEM(choices, i), args[5]);
            Py_DECREF(out);
            if (ok < 0)
                goto fail_it;
            continue;
        }
        if (PyTuple_GET_SIZE(out) < (best == Py_None ? 2 : 3)) {
            PyErr_SetString(PyExc_IndexError, "fold: a well-formed output needs a tag, a score and an evidence");
            goto fail;
        }
        score = PyTuple_GET_ITEM(out, 1);
        row = PyDict_GetItemWithError(PyTuple_GET_ITEM(pairs, i), tag); /* borrowed */
        if (row == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetObject(PyExc_KeyError, tag);
            goto fail;
        }
        pair = PyObject_GetItem(row, score);
        if (pair == NULL)
            goto fail;
        ok = PyList_Append(PyList_GET_ITEM(choices, i), pair);
        Py_DECREF(pair);
        if (ok < 0)
            goto fail;
        if (best == Py_None) {
            Py_DECREF(out);
            continue;
        }
        slot = PyList_GET_ITEM(best, i);
        evidence = PyTuple_GET_ITEM(out, 2);
        has_evidence = PyObject_IsTrue(evidence);
        if (has_evidence < 0)
            goto fail;
        level = PyLong_AsLong(score);
        if (level == -1 && PyErr_Occurred())
            goto fail;
        ok = beats_held(slot, tag, has_evidence, level, sample_idx);
        if (ok <= 0) {
            Py_DECREF(out);
            if (ok < 0)
                goto fail_it;
            continue;
        }
        ok = hold_entry(slot, tag, has_evidence, score, sample_idx, evidence);
        Py_DECREF(out);
        if (ok < 0)
            goto fail_it;
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
fail:
    Py_DECREF(out);
fail_it:
    Py_DECREF(it);
    return NULL;
}

/* fold_canonical: read a model output and fold it into a user's tally in one pass, when its
   answer is canonical as a whole (what read_canonical reads without the general rules): the
   same columns and entries as fold(..., read_canonical(text, spec).values(), ...), without
   building the outputs; an evidence string is only made when its entry wins. Returns False,
   having changed nothing, when the answer is not canonical (or text is not a str): the caller
   then parses it with the general rules and folds the outputs. */
static PyObject *
fold_canonical(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    static const char *signature = "fold_canonical(text, spec, choices: list, best: list | None, pairs: tuple, sample_idx: int)";
    PyObject *text, *dims, *choices, *best, *pairs;
    Py_ssize_t n_dims, start, end;
    Inner ins[MAX_WHOLE];
    long sample_idx;
    int whole;

    if (nargs != 6 || !check_spec(args[1], signature))
        goto bad_args;
    text = args[0];
    dims = PyTuple_GET_ITEM(args[1], 1);
    n_dims = PyTuple_GET_SIZE(dims);
    choices = args[2];
    best = args[3];
    pairs = args[4];
    if (!PyList_Check(choices) || PyList_GET_SIZE(choices) < n_dims || !PyTuple_Check(pairs)
        || PyTuple_GET_SIZE(pairs) < n_dims || !(best == Py_None || (PyList_Check(best) && PyList_GET_SIZE(best) >= n_dims)))
        goto bad_args;
    sample_idx = sample_index(args[5]);
    if (sample_idx == -1 && PyErr_Occurred())
        return NULL;
    if (!PyUnicode_Check(text))
        Py_RETURN_FALSE;
    if (answer_span(text, &start, &end) < 0)
        return NULL;
    whole = scan_whole(text, PyUnicode_KIND(text), PyUnicode_DATA(text), start, end, dims, ins);
    if (whole <= 0)
        return whole < 0 ? NULL : Py_NewRef(Py_False);

    for (Py_ssize_t i = 0; i < n_dims; i++) {
        const Inner *in = &ins[i];
        PyObject *row, *slot, *evidence, *score;
        int has_evidence = in->ev_end > in->ev_start, ok;

        row = PyDict_GetItemWithError(PyTuple_GET_ITEM(pairs, i), in->tag); /* borrowed */
        if (row == NULL || !PyTuple_Check(row) || PyTuple_GET_SIZE(row) <= in->level) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_KeyError, "pairs has no (tag, %ld) pair for %R", in->level, in->tag);
            return NULL;
        }
        if (PyList_Append(PyList_GET_ITEM(choices, i), PyTuple_GET_ITEM(row, in->level)) < 0)
            return NULL;
        if (best == Py_None)
            continue;
        slot = PyList_GET_ITEM(best, i);
        ok = beats_held(slot, in->tag, has_evidence, in->level, sample_idx);
        if (ok <= 0) {
            if (ok < 0)
                return NULL;
            continue;
        }
        evidence = PyUnicode_Substring(text, in->ev_start, in->ev_end);
        score = PyLong_FromLong(in->level);
        ok = evidence != NULL && score != NULL ? hold_entry(slot, in->tag, has_evidence, score, sample_idx, evidence) : -1;
        Py_XDECREF(evidence);
        Py_XDECREF(score);
        if (ok < 0)
            return NULL;
    }
    Py_RETURN_TRUE;
bad_args:
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_TypeError, signature);
    return NULL;
}

/* tag_totals: S_t = sum of confidences and count_t per tag over (tag, confidence, ...) items,
   skipping malformed ones (tag None), as voting._tag_totals does in Python (for winner). */
static PyObject *
tag_totals(PyObject *module, PyObject *choices)
{
    PyObject *totals, *it, *item, *result;
    Py_ssize_t n_valid = 0;

    totals = PyDict_New();
    if (totals == NULL)
        return NULL;
    it = PyObject_GetIter(choices);
    if (it == NULL) {
        Py_DECREF(totals);
        return NULL;
    }
    while ((item = PyIter_Next(it)) != NULL) {
        PyObject *tag, *conf, *cell, *sum, *count;

        item = as_tuple(item, 1, "tag_totals: a choice needs a tag");
        if (item == NULL)
            goto fail_it;
        tag = PyTuple_GET_ITEM(item, 0);
        if (tag == Py_None) {
            Py_DECREF(item);
            continue;
        }
        if (PyTuple_GET_SIZE(item) < 2) {
            PyErr_SetString(PyExc_IndexError, "tag_totals: a well-formed choice needs a tag and a confidence");
            goto fail;
        }
        conf = PyTuple_GET_ITEM(item, 1);
        n_valid++;
        cell = PyDict_GetItemWithError(totals, tag); /* borrowed */
        if (cell == NULL) {
            if (PyErr_Occurred())
                goto fail;
            cell = Py_BuildValue("[Oi]", conf, 1);
            if (cell == NULL || PyDict_SetItem(totals, tag, cell) < 0) {
                Py_XDECREF(cell);
                goto fail;
            }
            Py_DECREF(cell);
        } else {
            sum = PyNumber_Add(PyList_GET_ITEM(cell, 0), conf);
            if (sum == NULL)
                goto fail;
            count = PyLong_FromSsize_t(PyLong_AsSsize_t(PyList_GET_ITEM(cell, 1)) + 1);
            if (count == NULL || PyErr_Occurred()) {
                Py_XDECREF(count);
                Py_DECREF(sum);
                goto fail;
            }
            PyList_SetItem(cell, 0, sum); /* steals */
            PyList_SetItem(cell, 1, count);
        }
        Py_DECREF(item);
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) {
        Py_DECREF(totals);
        return NULL;
    }
    result = Py_BuildValue("(Nn)", totals, n_valid);
    return result;
fail:
    Py_DECREF(item);
fail_it:
    Py_DECREF(it);
    Py_DECREF(totals);
    return NULL;
}

/* Whether the ranking key (a1, a2, a3) is greater than (b1, b2, b3), compared as tuples are: the
   first unequal item decides. 1, 0, or -1 with an exception set. */
static int
key_greater(PyObject *a1, PyObject *a2, long a3, PyObject *b1, PyObject *b2, long b3)
{
    int eq = PyObject_RichCompareBool(a1, b1, Py_EQ);

    if (eq == 0)
        return PyObject_RichCompareBool(a1, b1, Py_GT);
    if (eq < 0)
        return -1;
    eq = PyObject_RichCompareBool(a2, b2, Py_EQ);
    if (eq == 0)
        return PyObject_RichCompareBool(a2, b2, Py_GT);
    return eq < 0 ? -1 : a3 > b3;
}

/* winner(choices, rank, by_count) -> (tag, float(S), count, float(margin), n_valid) or None, as
   voting._winner: tag_totals, then the highest key (S_t, count_t, -rank[tag]), or (count_t,
   S_t, -rank[tag]) by count; ranks are distinct, so the tag itself never decides. */
static PyObject *
winner(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *totals_n, *totals, *tag, *cell, *result = NULL;
    PyObject *best_tag = NULL, *best1 = NULL, *best2 = NULL, *run1 = NULL, *run2 = NULL;
    PyObject *score, *count, *margin;
    long best3 = 0, run3 = 0;
    Py_ssize_t pos = 0;
    int by_count;

    if (nargs != 3 || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "winner(choices, rank: dict, by_count: bool)");
        return NULL;
    }
    by_count = PyObject_IsTrue(args[2]);
    if (by_count < 0)
        return NULL;
    totals_n = tag_totals(module, args[0]);
    if (totals_n == NULL)
        return NULL;
    totals = PyTuple_GET_ITEM(totals_n, 0);
    /* Keys are borrowed from the cells of totals, which lives until the end. */
    while (PyDict_Next(totals, &pos, &tag, &cell)) {
        PyObject *r = PyDict_GetItemWithError(args[1], tag), *k1, *k2;
        long k3;
        int gt;

        if (r == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetObject(PyExc_KeyError, tag);
            goto done;
        }
        k3 = -PyLong_AsLong(r);
        if (PyErr_Occurred())
            goto done;
        k1 = PyList_GET_ITEM(cell, by_count ? 1 : 0);
        k2 = PyList_GET_ITEM(cell, by_count ? 0 : 1);
        gt = best1 == NULL ? 1 : key_greater(k1, k2, k3, best1, best2, best3);
        if (gt < 0)
            goto done;
        if (gt) {
            run1 = best1, run2 = best2, run3 = best3;
            best1 = k1, best2 = k2, best3 = k3, best_tag = tag;
            continue;
        }
        gt = run1 == NULL ? 1 : key_greater(k1, k2, k3, run1, run2, run3);
        if (gt < 0)
            goto done;
        if (gt)
            run1 = k1, run2 = k2, run3 = k3;
    }
    if (best1 == NULL) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    score = PyNumber_Float(by_count ? best2 : best1);
    count = PyNumber_Long(by_count ? best1 : best2);
    margin = run1 == NULL ? PyNumber_Float(best1) : PyNumber_Subtract(best1, run1);
    if (margin != NULL && run1 != NULL)
        Py_SETREF(margin, PyNumber_Float(margin));
    if (score != NULL && count != NULL && margin != NULL)
        result = PyTuple_Pack(5, best_tag, score, count, margin, PyTuple_GET_ITEM(totals_n, 1));
    Py_XDECREF(score);
    Py_XDECREF(count);
    Py_XDECREF(margin);
done:
    Py_DECREF(totals_n);
    return result;
}

static PyMethodDef methods[] = {
    {"read_canonical", (PyCFunction)(void (*)(void))read_canonical, METH_FASTCALL,
     "read_canonical(text, spec) -> {key: DimensionOutput, or None where the general rules must decide}."},
    {"fold", (PyCFunction)(void (*)(void))fold, METH_FASTCALL,
     "fold(choices, best, pairs, outputs, sample_idx, malformed): one sample into a user's tally."},
    {"fold_canonical", (PyCFunction)(void (*)(void))fold_canonical, METH_FASTCALL,
     "fold_canonical(text, spec, choices, best, pairs, sample_idx) -> whether a canonical answer was read and folded."},
    {"winner", (PyCFunction)(void (*)(void))winner, METH_FASTCALL,
     "winner(choices, rank, by_count) -> (tag, S, count, margin, n_valid) of the voted tag, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_speedups",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    THINK_OPEN = PyUnicode_InternFromString("<think>");
    THINK_CLOSE = PyUnicode_InternFromString("</think>");
    EVIDENCE_OPEN = PyUnicode_InternFromString("<evidence>");
    EVIDENCE_TAG = PyUnicode_InternFromString("</evidence><tag>");
    TAG_SCORE = PyUnicode_InternFromString("</tag><score>");
    SCORE_CLOSE = PyUnicode_InternFromString("</score>");
    if (THINK_OPEN == NULL || THINK_CLOSE == NULL || EVIDENCE_OPEN == NULL || EVIDENCE_TAG == NULL || TAG_SCORE == NULL
        || SCORE_CLOSE == NULL)
        return NULL;
    return PyModule_Create(&module);
}
