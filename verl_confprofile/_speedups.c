/* Compiled twins of three hot loops of the core; each Python original stays the reference
   (and the fallback when this module is not built), and the tests hold the two equal.

   read_canonical(text, spec) -> {key: DimensionOutput} or None      (profile_format._Parser)
   fold(choices, best, pairs, outputs, sample_idx, malformed) -> None (tally.fold)
   tag_totals(choices) -> ({tag: [S_t, count_t]}, n_valid)          (voting.tag_totals)

   read_canonical: spec is built once per taxonomy by profile_format._Parser:
       (DimensionOutput, ((key, opener, closer, lookup), ...))
   with opener "<key><evidence>", closer "</score></key>" and lookup the taxonomy's exact
   {label or alias: canonical label}. The answer (the text after the last "</think>", or before
   an unclosed "<think>", as profile_format.answer_text cuts it) is canonical when its only '<'
   are those of its blocks, which come in taxonomy order, each reading
       <key><evidence>E</evidence><tag>T</tag><score>D</score></key>
   with T found in lookup and D a digit 1..5. Then the result is what the general rules give;
   anything else returns None and the caller takes the general rules. One forward pass from
   '<' to '<', so linear; never raises on a str. */

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

/* text[a:b] stripped of whitespace as str.strip() defines it. */
static PyObject *
stripped(PyObject *text, int kind, const void *data, Py_ssize_t a, Py_ssize_t b)
{
    while (a < b && Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, a)))
        a++;
    while (b > a && Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, b - 1)))
        b--;
    return PyUnicode_Substring(text, a, b);
}

/* The inside of one block, text[start:...]: "<evidence>E</evidence><tag>T</tag><score>D</score>"
   with no other '<', T a key of lookup and D a digit 1..5, read into a cls (tag, score,
   evidence, None) instance, and *after set to the position after "</score>". Py_None when it
   is not so (new reference either way); NULL with an exception set. */
static PyObject *
read_inner(PyObject *text, int kind, const void *data, Py_ssize_t start, Py_ssize_t end, PyObject *lookup,
           PyTypeObject *cls, Py_ssize_t *after)
{
    Py_ssize_t ev_start, ev_end, tag_start, tag_end, score_end;
    PyObject *raw, *tag, *score, *evidence, *out;
    Py_UCS4 digit;

    if (!literal_at(text, kind, data, start, end, EVIDENCE_OPEN, start))
        Py_RETURN_NONE;
    ev_start = start + PyUnicode_GET_LENGTH(EVIDENCE_OPEN);
    if (!next_is(text, kind, data, ev_start, end, EVIDENCE_TAG, &ev_end))
        Py_RETURN_NONE;
    tag_start = ev_end + PyUnicode_GET_LENGTH(EVIDENCE_TAG);
    if (!next_is(text, kind, data, tag_start, end, TAG_SCORE, &tag_end))
        Py_RETURN_NONE;
    score_end = tag_end + PyUnicode_GET_LENGTH(TAG_SCORE) + 1;
    if (!literal_at(text, kind, data, score_end - 1, end, SCORE_CLOSE, score_end))
        Py_RETURN_NONE;
    digit = PyUnicode_READ(kind, data, score_end - 1);
    if (digit < '1' || digit > '5')
        Py_RETURN_NONE;

    raw = PyUnicode_Substring(text, tag_start, tag_end);
    if (raw == NULL)
        return NULL;
    tag = PyDict_GetItemWithError(lookup, raw); /* borrowed */
    Py_DECREF(raw);
    if (tag == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    out = cls->tp_alloc(cls, 4);
    score = PyLong_FromLong((long)(digit - '0'));
    evidence = stripped(text, kind, data, ev_start, ev_end);
    if (out == NULL || score == NULL || evidence == NULL) {
        Py_XDECREF(out);
        Py_XDECREF(score);
        Py_XDECREF(evidence);
        return NULL;
    }
    Py_INCREF(tag);
    Py_INCREF(Py_None);
    PyTuple_SET_ITEM(out, 0, tag);
    PyTuple_SET_ITEM(out, 1, score);
    PyTuple_SET_ITEM(out, 2, evidence);
    PyTuple_SET_ITEM(out, 3, Py_None);
    *after = score_end + PyUnicode_GET_LENGTH(SCORE_CLOSE);
    return out;
}

/* One dimension on its own, for an answer that is not canonical as a whole: its "<key>" and
   "</key>" must each occur once in text[pos:end] (counted as the general rules count them),
   in that order, around exactly one canonical inside. Py_None when not (new reference). */
static PyObject *
read_block(PyObject *text, int kind, const void *data, Py_ssize_t pos, Py_ssize_t end, PyObject *open_tag,
           PyObject *close_tag, PyObject *lookup, PyTypeObject *cls)
{
    Py_ssize_t n_open, n_close, start, stop, after = -1;
    PyObject *out;

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
    out = read_inner(text, kind, data, start, stop, lookup, cls, &after);
    if (out != NULL && out != Py_None && after != stop) {
        Py_DECREF(out);
        out = Py_NewRef(Py_None);
    }
    return out;
}

static PyObject *
read_canonical(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *text, *dims, *result;
    PyTypeObject *cls;
    Py_ssize_t n_dims, len, start, end, pos, cut;
    int kind, whole = 1;
    const void *data;

    if (nargs != 2 || !PyUnicode_Check(args[0]) || !PyTuple_Check(args[1]) || PyTuple_GET_SIZE(args[1]) != 2
        || !PyType_Check(PyTuple_GET_ITEM(args[1], 0))
        || !PyType_IsSubtype((PyTypeObject *)PyTuple_GET_ITEM(args[1], 0), &PyTuple_Type)
        || !PyTuple_Check(PyTuple_GET_ITEM(args[1], 1))) {
        PyErr_SetString(PyExc_TypeError, "read_canonical(text: str, spec: (tuple subclass, tuple of dimensions))");
        return NULL;
    }
    text = args[0];
    cls = (PyTypeObject *)PyTuple_GET_ITEM(args[1], 0);
    dims = PyTuple_GET_ITEM(args[1], 1);
    n_dims = PyTuple_GET_SIZE(dims);
    for (Py_ssize_t i = 0; i < n_dims; i++) {
        PyObject *dim = PyTuple_GET_ITEM(dims, i);
        if (!PyTuple_Check(dim) || PyTuple_GET_SIZE(dim) != 4 || !PyUnicode_Check(PyTuple_GET_ITEM(dim, 1))
            || !PyUnicode_Check(PyTuple_GET_ITEM(dim, 2)) || !PyDict_Check(PyTuple_GET_ITEM(dim, 3))) {
            PyErr_SetString(PyExc_TypeError, "each dimension of the spec must be (key, '<key>', '</key>', lookup dict)");
            return NULL;
        }
    }
    len = PyUnicode_GET_LENGTH(text);
    kind = PyUnicode_KIND(text);
    data = PyUnicode_DATA(text);

    /* The answer is text[start:end]: reasoning cut off as answer_text does. */
    start = 0;
    end = len;
    cut = PyUnicode_Find(text, THINK_CLOSE, 0, len, -1);
    if (cut == -2)
        return NULL;
    if (cut >= 0) {
        start = cut + PyUnicode_GET_LENGTH(THINK_CLOSE);
    } else {
        cut = PyUnicode_Find(text, THINK_OPEN, 0, len, 1);
        if (cut == -2)
            return NULL;
        if (cut >= 0)
            end = cut;
    }

    result = PyDict_New();
    if (result == NULL)
        return NULL;
    /* First the whole answer in one pass: blocks in taxonomy order and no other '<'. */
    pos = start;
    for (Py_ssize_t i = 0; i < n_dims && whole; i++) {
        PyObject *dim = PyTuple_GET_ITEM(dims, i), *out;
        PyObject *open_tag = PyTuple_GET_ITEM(dim, 1), *close_tag = PyTuple_GET_ITEM(dim, 2);
        Py_ssize_t at, after = -1;

        if (!next_is(text, kind, data, pos, end, open_tag, &at)) {
            whole = 0;
            break;
        }
        out = read_inner(text, kind, data, at + PyUnicode_GET_LENGTH(open_tag), end, PyTuple_GET_ITEM(dim, 3), cls, &after);
        if (out == NULL)
            goto fail;
        whole = out != Py_None && literal_at(text, kind, data, after, end, close_tag, after);
        if (whole && PyDict_SetItem(result, PyTuple_GET_ITEM(dim, 0), out) < 0) {
            Py_DECREF(out);
            goto fail;
        }
        Py_DECREF(out);
        pos = after + PyUnicode_GET_LENGTH(close_tag);
    }
    if (whole && next_lt(kind, data, pos, end) < 0)
        return result;
    if (PyErr_Occurred())
        goto fail;

    /* Else dimension by dimension; None where the general rules must decide. */
    PyDict_Clear(result);
    for (Py_ssize_t i = 0; i < n_dims; i++) {
        PyObject *dim = PyTuple_GET_ITEM(dims, i), *out;
        out = read_block(text, kind, data, start, end, PyTuple_GET_ITEM(dim, 1), PyTuple_GET_ITEM(dim, 2),
                         PyTuple_GET_ITEM(dim, 3), cls);
        if (out == NULL)
            goto fail;
        if (PyDict_SetItem(result, PyTuple_GET_ITEM(dim, 0), out) < 0) {
            Py_DECREF(out);
            goto fail;
        }
        Py_DECREF(out);
    }
    return result;
fail:
    Py_DECREF(result);
    return NULL;
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

/* fold: one sample into a user's tally, as tally.fold does it in Python:
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
    sample_idx = PyLong_AsLong(args[4]);
    if (sample_idx == -1 && PyErr_Occurred())
        return NULL;
    it = PyObject_GetIter(args[3]);
    if (it == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(choices) && i < PyTuple_GET_SIZE(pairs)
                           && (best == Py_None || i < PyList_GET_SIZE(best)); i++) {
        PyObject *tag, *score, *row, *pair, *evidence, *slot, *held, *entry;
        long level;
        int has_evidence, ok;

        out = PyIter_Next(it);
        if (out == NULL)
            break;
        out = as_tuple(out, 3, "fold: an output needs a tag, a score and an evidence");
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
        level = PyLong_AsLong(score);
        if (has_evidence < 0 || (level == -1 && PyErr_Occurred()) || !PyDict_Check(slot)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "fold: best must hold one dict per dimension");
            goto fail;
        }
        held = PyDict_GetItemWithError(slot, tag); /* borrowed */
        if (held == NULL && PyErr_Occurred())
            goto fail;
        if (held != NULL) {
            long h0, h1, h2;
            if (!PyTuple_Check(held) || PyTuple_GET_SIZE(held) != 4) {
                PyErr_SetString(PyExc_TypeError, "fold: a held evidence entry must be a 4-tuple");
                goto fail;
            }
            h0 = PyLong_AsLong(PyTuple_GET_ITEM(held, 0));
            h1 = PyLong_AsLong(PyTuple_GET_ITEM(held, 1));
            h2 = PyLong_AsLong(PyTuple_GET_ITEM(held, 2));
            if (PyErr_Occurred())
                goto fail;
            if (has_evidence < h0 || (has_evidence == h0 && (level < h1 || (level == h1 && -sample_idx <= h2)))) {
                Py_DECREF(out);
                continue;
            }
        }
        entry = Py_BuildValue("(OOlO)", has_evidence ? Py_True : Py_False, score, -sample_idx, evidence);
        if (entry == NULL)
            goto fail;
        ok = PyDict_SetItem(slot, tag, entry);
        Py_DECREF(entry);
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

/* tag_totals: S_t = sum of confidences and count_t per tag over (tag, confidence, ...) items,
   skipping malformed ones (tag None), as voting.tag_totals does in Python. */
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

        item = as_tuple(item, 2, "tag_totals: a choice needs a tag and a confidence");
        if (item == NULL)
            goto fail_it;
        tag = PyTuple_GET_ITEM(item, 0);
        conf = PyTuple_GET_ITEM(item, 1);
        if (tag == Py_None) {
            Py_DECREF(item);
            continue;
        }
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

static PyMethodDef methods[] = {
    {"read_canonical", (PyCFunction)(void (*)(void))read_canonical, METH_FASTCALL,
     "read_canonical(text, spec) -> {key: DimensionOutput} when the answer in text is canonical, else None."},
    {"fold", (PyCFunction)(void (*)(void))fold, METH_FASTCALL,
     "fold(choices, best, pairs, outputs, sample_idx, malformed): one sample into a user's tally."},
    {"tag_totals", (PyCFunction)tag_totals, METH_O,
     "tag_totals(choices) -> ({tag: [S_t, count_t]}, n_valid) over the well-formed choices."},
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
