/*
 * The native ring core: ring.py's Producer, Consumer and Reader in C, on the same
 * bytes (layout version 3; ring.py's docstring is the specification).
 *
 * Why C and not Python: every local message costs one write and one poll, and in
 * Python each is a few dozen bytecodes and shared-word stores through a memoryview.
 * Why the CPython C API and not Cython: no build dependency beyond a C compiler, and
 * the hot paths (METH_FASTCALL, bytes objects built straight from the ring) are spelled
 * out rather than left to a code generator.
 *
 * Memory ordering, portable (C11 <stdatomic.h>), not borrowed from x86-64's TSO:
 * - the producer writes a record's payload and header with plain stores, then
 *   publishes the tail with a release store; the consumer loads the tail with acquire,
 *   so every record below that tail is visible before it is read (aarch64 included);
 * - the consumer frees space by a release store of the head, after its last read of
 *   the records; the producer loads the head with acquire before overwriting;
 * - the doorbell handshake (producer: publish tail, then read the consumer's signal;
 *   consumer: announce WAITING, then re-check the tail) is the store-load pattern that
 *   only a sequentially consistent fence orders: both sides issue one.
 * Every shared word is an aligned 8-byte atomic, so no reader sees a torn value.
 *
 * Beside the ring ends, two callables take the common case of the two calls every
 * local message makes off the Python interpreter: `Sender` (Outbound.send: a channel
 * in use, one record) and `Encoder` (codec.encode: a message, and its envelope), and
 * of the one every message with an envelope needs at the receiver: `FieldsDecoder`
 * (codec.decode_fields). Each stands in front of the Python function and hands it
 * everything else.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <structmember.h>
#include <time.h>

#define MAGIC 0x3130474E49525542ULL
#define VERSION 3
#define HEADER_SIZE 256
#define MIN_CAPACITY 128
#define MIN_MAX_RECORD 24
#define MAX_META ((1ULL << 24) - 1)
#define MAX_TAG 1024
#define MAX_MESSAGE (1ULL << 40)
#define LEN_MASK 0xFFFFFFFFULL
#define FIRST_PREFIX 8
#define NEXT_PREFIX 16
/* Copies this large are done without the GIL: other threads of the process go on. */
#define NOGIL_COPY (64 * 1024)

enum { W_MAGIC = 0, W_VERSION = 1, W_CAPACITY = 2, W_MAX_RECORD = 3 };
enum { W_TAIL = 8, W_MSGS_W = 9, W_BYTES_W = 10, W_FULL = 11, W_P_CLOSED = 12,
       W_P_ID = 13, W_P_TOKEN = 14 };
enum { W_HEAD = 16, W_SIGNAL = 17, W_MSGS_R = 18, W_BYTES_R = 19, W_SEL_LEN = 20,
       W_SEL_HEAD = 21 };
enum { RUNNING = 0, WAITING = 1, CLOSED = 2, STATE_MASK = 3 };
enum { WHOLE = 1, FIRST = 2, MIDDLE = 3, LAST = 4, PAD = 5, SELECT = 6 };

typedef _Atomic uint64_t aword;

static PyObject *RingCorrupted; /* mybus_actors.errors.RingCorrupted */
static PyObject *RemoteProtocolError; /* mybus_actors.errors.RemoteProtocolError */
static PyObject *RingStats;     /* mybus_actors.ring.RingStats */

/* -- the shared words ----------------------------------------------------------------- */

static inline uint64_t ld(aword *w, int i) {
    return atomic_load_explicit(&w[i], memory_order_relaxed);
}
static inline uint64_t ld_acq(aword *w, int i) {
    return atomic_load_explicit(&w[i], memory_order_acquire);
}
static inline void st(aword *w, int i, uint64_t v) {
    atomic_store_explicit(&w[i], v, memory_order_relaxed);
}
static inline void st_rel(aword *w, int i, uint64_t v) {
    atomic_store_explicit(&w[i], v, memory_order_release);
}
/* A record header word, at a data offset (8-byte aligned). */
static inline uint64_t ld_hdr(uint8_t *base, uint64_t off) {
    return atomic_load_explicit((aword *)(base + HEADER_SIZE + off), memory_order_relaxed);
}
static inline void st_hdr(uint8_t *base, uint64_t off, uint64_t v) {
    atomic_store_explicit((aword *)(base + HEADER_SIZE + off), v, memory_order_relaxed);
}

static void copy_bytes(void *dst, const void *src, size_t n) {
    if (n >= NOGIL_COPY) {
        Py_BEGIN_ALLOW_THREADS
        memcpy(dst, src, n);
        Py_END_ALLOW_THREADS
    } else {
        memcpy(dst, src, n);
    }
}

static PyObject *corrupted(const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    PyErr_SetString(RingCorrupted, msg);
    return NULL;
}

static PyObject *value_error(const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    PyErr_SetString(PyExc_ValueError, msg);
    return NULL;
}

/* -- attaching: what every end shares -------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    uint8_t *base; /* NULL once released */
    aword *words;
    uint64_t capacity;
    uint64_t mask;
    uint64_t max_record;
} View;

static int view_attach(View *self, PyObject *buf) {
    if (PyObject_GetBuffer(buf, &self->view, PyBUF_WRITABLE) < 0)
        return -1;
    Py_ssize_t size = self->view.len;
    if (size < HEADER_SIZE + MIN_CAPACITY) {
        PyBuffer_Release(&self->view);
        corrupted("buffer of %zd bytes cannot hold a ring", size);
        return -1;
    }
    if (((uintptr_t)self->view.buf) & 7) {
        PyBuffer_Release(&self->view);
        PyErr_SetString(PyExc_ValueError, "a ring buffer must be 8-byte aligned");
        return -1;
    }
    uint8_t *base = self->view.buf;
    aword *w = (aword *)base;
    uint64_t magic = ld_acq(w, W_MAGIC), version = ld(w, W_VERSION);
    uint64_t capacity = ld(w, W_CAPACITY), max_record = ld(w, W_MAX_RECORD);
    char problem[160] = "";
    if (magic != MAGIC)
        snprintf(problem, sizeof problem, "bad magic 0x%llx", (unsigned long long)magic);
    else if (version != VERSION)
        snprintf(problem, sizeof problem, "layout version %llu, this code reads %d",
                 (unsigned long long)version, VERSION);
    else if (capacity < MIN_CAPACITY || (capacity & (capacity - 1)))
        snprintf(problem, sizeof problem, "capacity %llu is not a power of two",
                 (unsigned long long)capacity);
    else if (HEADER_SIZE + capacity > (uint64_t)size)
        snprintf(problem, sizeof problem, "capacity %llu exceeds the %zd-byte buffer",
                 (unsigned long long)capacity, size);
    else if (max_record < MIN_MAX_RECORD || max_record + 16 > capacity / 2)
        snprintf(problem, sizeof problem, "max_record %llu out of range",
                 (unsigned long long)max_record);
    if (problem[0]) {
        PyBuffer_Release(&self->view);
        PyErr_SetString(RingCorrupted, problem);
        return -1;
    }
    self->base = base;
    self->words = w;
    self->capacity = capacity;
    self->mask = capacity - 1;
    self->max_record = max_record;
    return 0;
}

static int attached(View *self) {
    if (self->base == NULL) {
        PyErr_SetString(PyExc_ValueError, "operation on a released ring end");
        return 0;
    }
    return 1;
}

static PyObject *view_release(View *self, PyObject *Py_UNUSED(ignored)) {
    if (self->base != NULL) {
        self->base = NULL;
        self->words = NULL;
        PyBuffer_Release(&self->view);
    }
    Py_RETURN_NONE;
}

static PyObject *view_stats(View *self) {
    if (!attached(self))
        return NULL;
    aword *w = self->words;
    return PyObject_CallFunction(
        RingStats, "KLKKKKK", (unsigned long long)self->capacity,
        (long long)(ld_acq(w, W_TAIL) - ld_acq(w, W_HEAD)),
        (unsigned long long)ld(w, W_MSGS_W), (unsigned long long)ld(w, W_BYTES_W),
        (unsigned long long)ld(w, W_FULL), (unsigned long long)ld(w, W_MSGS_R),
        (unsigned long long)ld(w, W_BYTES_R));
}

static PyObject *get_capacity(View *self, void *c) {
    return PyLong_FromUnsignedLongLong(self->capacity);
}
static PyObject *get_max_record(View *self, void *c) {
    return PyLong_FromUnsignedLongLong(self->max_record);
}

/* A message's bytes: bytes objects without a buffer export (the hot case). */
typedef struct {
    Py_buffer view;
    const uint8_t *ptr;
    Py_ssize_t len;
    int exported;
} Data;

static int data_get(PyObject *obj, Data *d) {
    if (PyBytes_CheckExact(obj)) {
        d->ptr = (const uint8_t *)PyBytes_AS_STRING(obj);
        d->len = PyBytes_GET_SIZE(obj);
        d->exported = 0;
        return 0;
    }
    if (PyObject_GetBuffer(obj, &d->view, PyBUF_SIMPLE) < 0)
        return -1;
    d->ptr = d->view.buf;
    d->len = d->view.len;
    d->exported = 1;
    return 0;
}

static void data_put(Data *d) {
    if (d->exported)
        PyBuffer_Release(&d->view);
}

static int meta_get(PyObject *obj, uint64_t *meta) {
    if (obj == NULL) {
        *meta = 0;
        return 0;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow || v < 0 || (unsigned long long)v > MAX_META) {
        PyErr_SetString(PyExc_ValueError, "meta must be in [0, 2**24)");
        return -1;
    }
    *meta = (uint64_t)v;
    return 0;
}

static int u64_get(PyObject *obj, uint64_t *out) {
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}


/* Positional-or-keyword arguments of a METH_FASTCALL | METH_KEYWORDS method: `out` gets
 * one slot per name, NULL where not given; the first `required` must be. */
static int fast_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                     const char *const *names, int count, int required, PyObject **out,
                     const char *signature) {
    for (int i = 0; i < count; i++)
        out[i] = NULL;
    if (nargs > count)
        goto bad;
    for (Py_ssize_t i = 0; i < nargs; i++)
        out[i] = args[i];
    if (kwnames != NULL) {
        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(kwnames); j++) {
            PyObject *key = PyTuple_GET_ITEM(kwnames, j);
            int i = 0;
            while (i < count && PyUnicode_CompareWithASCIIString(key, names[i]) != 0)
                i++;
            if (i == count || out[i] != NULL)
                goto bad;
            out[i] = args[nargs + j];
        }
    }
    for (int i = 0; i < required; i++)
        if (out[i] == NULL)
            goto bad;
    return 0;
bad:
    PyErr_Format(PyExc_TypeError, "bad arguments: %s", signature);
    return -1;
}

/* -- the producer ---------------------------------------------------------------------- */

typedef struct {
    View v;
    uint64_t tail;
    uint64_t head_cache;
    uint64_t frag_sent;
    uint64_t msgs;
    uint64_t bytes;
    uint64_t full;
    uint64_t first_end;
} Producer;

/* tp_init's part every end shares: parse (buf), attach once. */
static int end_init(View *v, PyObject *args, PyObject *kwds, const char *format) {
    PyObject *buf;
    static char *kwlist[] = {"buf", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, format, kwlist, &buf))
        return -1;
    if (v->base != NULL) {
        PyErr_SetString(PyExc_TypeError, "a ring end is attached once");
        return -1;
    }
    return view_attach(v, buf);
}

static int producer_init(Producer *self, PyObject *args, PyObject *kwds) {
    if (end_init(&self->v, args, kwds, "O:Producer") < 0)
        return -1;
    aword *w = self->v.words;
    self->tail = ld(w, W_TAIL);
    self->head_cache = ld_acq(w, W_HEAD);
    self->frag_sent = 0;
    self->msgs = ld(w, W_MSGS_W);
    self->bytes = ld(w, W_BYTES_W);
    self->full = ld(w, W_FULL);
    self->first_end = 0;
    return 0;
}

static void end_dealloc(View *self) {
    view_release(self, NULL);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static inline void note_full(Producer *self) {
    self->full += 1;
    st(self->v.words, W_FULL, self->full);
}

static inline void publish_counters(Producer *self) {
    st(self->v.words, W_MSGS_W, self->msgs);
    st(self->v.words, W_BYTES_W, self->bytes);
}

/* Room for a record of `size` bytes at `tail` (padding included); refreshes the cached
 * head only when the cached one says no. Returns the bytes it takes, or 0: no room. */
static inline uint64_t room_for(Producer *self, uint64_t tail, uint64_t size) {
    uint64_t cap = self->v.capacity;
    uint64_t room = cap - (tail & self->v.mask);
    uint64_t need = size <= room ? size : size + room;
    if (tail + need - self->head_cache > cap) {
        self->head_cache = ld_acq(self->v.words, W_HEAD);
        if (tail + need - self->head_cache > cap)
            return 0;
    }
    return need;
}

/* Write one record (payload: prefix then data) at `tail`, unpublished. Returns the new
 * tail, or 0 with *ok = 0 when there is no room. */
static uint64_t put(Producer *self, uint64_t tail, const void *prefix, uint64_t plen,
                    const uint8_t *data, uint64_t dlen, uint64_t rtype, uint64_t meta,
                    int *ok) {
    uint64_t n = plen + dlen;
    uint64_t size = (n + 15) & ~7ULL;
    if (!room_for(self, tail, size)) {
        *ok = 0;
        return 0;
    }
    uint64_t off = tail & self->v.mask;
    uint64_t room = self->v.capacity - off;
    uint8_t *base = self->v.base;
    if (size > room) {
        st_hdr(base, off, (room - 8) | ((uint64_t)PAD << 32));
        tail += room;
        off = 0;
    }
    uint8_t *dst = base + HEADER_SIZE + off + 8;
    if (plen)
        memcpy(dst, prefix, plen);
    if (dlen)
        copy_bytes(dst + plen, data, dlen);
    st_hdr(base, off, n | (rtype << 32) | (meta << 40));
    *ok = 1;
    return tail + size;
}

static inline void publish(Producer *self, uint64_t tail, uint64_t messages, uint64_t nbytes) {
    self->msgs += messages;
    self->bytes += nbytes;
    publish_counters(self);
    self->tail = tail;
    st_rel(self->v.words, W_TAIL, tail); /* the commit point */
}

/* The consumer's signal word after a full fence (the doorbell handshake). */
static inline uint64_t signal_word(Producer *self) {
    atomic_thread_fence(memory_order_seq_cst);
    return ld(self->v.words, W_SIGNAL);
}

/* write(data, meta=0) -> FULL (-1) or the consumer's signal word. The hot path. */
static const char *const data_meta[] = {"data", "meta"};

/* Write and publish one message of at most max_record bytes: the consumer's signal word,
 * FULL (-1) when there is no room, or -2 with an exception set. */
static long long write_one(Producer *self, PyObject *data, PyObject *metaobj) {
    if (!attached(&self->v))
        return -2;
    uint64_t meta;
    if (meta_get(metaobj, &meta) < 0)
        return -2;
    Data d;
    if (data_get(data, &d) < 0)
        return -2;
    uint64_t n = (uint64_t)d.len;
    if (n > self->v.max_record) {
        data_put(&d);
        value_error("%llu-byte message exceeds max_record %llu", (unsigned long long)n,
                    (unsigned long long)self->v.max_record);
        return -2;
    }
    int ok;
    uint64_t tail = put(self, self->tail, NULL, 0, d.ptr, n, WHOLE, meta, &ok);
    data_put(&d);
    if (!ok) {
        note_full(self);
        return -1;
    }
    /* The counters too: two plain stores, ordered before the tail's release, so that
     * `mybus top` counts a message a stopped reader never read. */
    publish(self, tail, 1, n);
    return (long long)signal_word(self); /* the signal word's state and sleep count fit */
}

/* (data, meta=0) of write, offer and offer_message. */
static int data_meta_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                          PyObject **a) {
    if (kwnames == NULL && nargs == 2) { /* the hot call */
        a[0] = args[0];
        a[1] = args[1];
        return 0;
    }
    return fast_args(args, nargs, kwnames, data_meta, 2, 1, a, "(data, meta=0)");
}

/* write(data, meta=0) -> FULL (-1) or the consumer's signal word. The hot path. */
static PyObject *producer_write(Producer *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames) {
    PyObject *a[2];
    if (data_meta_args(args, nargs, kwnames, a) < 0)
        return NULL;
    long long signal = write_one(self, a[0], a[1]);
    return signal == -2 ? NULL : PyLong_FromLongLong(signal);
}

static PyObject *producer_offer(Producer *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames) {
    PyObject *a[2];
    if (data_meta_args(args, nargs, kwnames, a) < 0)
        return NULL;
    long long signal = write_one(self, a[0], a[1]);
    return signal == -2 ? NULL : PyBool_FromLong(signal != -1);
}

static PyObject *producer_select(Producer *self, PyObject *tag) {
    if (!attached(&self->v))
        return NULL;
    Data d;
    if (data_get(tag, &d) < 0)
        return NULL;
    if (d.len <= 0 || d.len > MAX_TAG) {
        Py_ssize_t n = d.len;
        data_put(&d);
        return value_error("a SELECT tag has 1 to %d bytes, got %zd", MAX_TAG, n);
    }
    int ok;
    uint64_t tail = put(self, self->tail, NULL, 0, d.ptr, (uint64_t)d.len, SELECT, 0, &ok);
    data_put(&d);
    if (!ok) {
        note_full(self);
        Py_RETURN_FALSE;
    }
    self->tail = tail;
    st_rel(self->v.words, W_TAIL, tail);
    Py_RETURN_TRUE;
}

static PyObject *producer_offer_batch(Producer *self, PyObject *items) {
    if (!attached(&self->v))
        return NULL;
    PyObject *it = PyObject_GetIter(items);
    if (it == NULL)
        return NULL;
    uint64_t tail = self->tail, count = 0, nbytes = 0;
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        PyObject *data, *metaobj;
        if (!PyTuple_CheckExact(item)) { /* any pair, as the pure core unpacks it */
            PyObject *pair_ = PySequence_Tuple(item);
            Py_DECREF(item);
            if (pair_ == NULL) {
                Py_DECREF(it);
                return NULL;
            }
            item = pair_;
        }
        if (PyTuple_GET_SIZE(item) != 2) {
            Py_DECREF(item);
            Py_DECREF(it);
            PyErr_SetString(PyExc_ValueError, "offer_batch takes (data, meta) pairs");
            return NULL;
        }
        data = PyTuple_GET_ITEM(item, 0);
        metaobj = PyTuple_GET_ITEM(item, 1);
        uint64_t meta;
        Data d;
        if (meta_get(metaobj, &meta) < 0 || data_get(data, &d) < 0) {
            Py_DECREF(item);
            Py_DECREF(it);
            return NULL;
        }
        uint64_t n = (uint64_t)d.len;
        if (n > self->v.max_record) {
            data_put(&d);
            Py_DECREF(item);
            Py_DECREF(it);
            return value_error("%llu-byte message exceeds max_record %llu",
                               (unsigned long long)n, (unsigned long long)self->v.max_record);
        }
        int ok;
        uint64_t next = put(self, tail, NULL, 0, d.ptr, n, WHOLE, meta, &ok);
        data_put(&d);
        Py_DECREF(item);
        if (!ok) {
            note_full(self);
            break;
        }
        tail = next;
        count += 1;
        nbytes += n;
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        return NULL;
    if (count)
        publish(self, tail, count, nbytes);
    return PyLong_FromUnsignedLongLong(count);
}

/* Write fragments of `d` from `sent` on, unpublished; returns the new tail (the old one
 * when nothing, or with all_or_nothing not everything, fits); sets frag_sent. */
static uint64_t put_fragments(Producer *self, Data *d, uint64_t meta, uint64_t sent,
                              int all_or_nothing) {
    uint64_t total = (uint64_t)d->len;
    uint64_t tail = self->tail;
    uint64_t chunk_max = self->v.max_record;
    while (sent < total) {
        int ok;
        uint64_t chunk, next;
        if (sent == 0) {
            uint64_t prefix[1] = {total};
            chunk = total < chunk_max - FIRST_PREFIX ? total : chunk_max - FIRST_PREFIX;
            next = put(self, tail, prefix, FIRST_PREFIX, d->ptr, chunk, FIRST, meta, &ok);
            if (ok)
                self->first_end = next;
        } else {
            uint64_t prefix[2] = {self->first_end, sent};
            uint64_t left = total - sent;
            chunk = left < chunk_max - NEXT_PREFIX ? left : chunk_max - NEXT_PREFIX;
            uint64_t rtype = sent + chunk == total ? LAST : MIDDLE;
            next = put(self, tail, prefix, NEXT_PREFIX, d->ptr + sent, chunk, rtype, 0, &ok);
        }
        if (!ok) {
            if (all_or_nothing)
                return self->tail;
            note_full(self);
            break;
        }
        tail = next;
        sent += chunk;
    }
    self->frag_sent = sent;
    return tail;
}

static PyObject *producer_offer_fragments(Producer *self, PyObject *const *args,
                                          Py_ssize_t nargs, PyObject *kwnames) {
    static const char *const names[] = {"data", "meta", "sent"};
    PyObject *a[3];
    if (fast_args(args, nargs, kwnames, names, 3, 3, a, "(data, meta, sent)") < 0)
        return NULL;
    if (!attached(&self->v))
        return NULL;
    uint64_t meta, sent;
    if (meta_get(a[1], &meta) < 0 || u64_get(a[2], &sent) < 0)
        return NULL;
    Data d;
    if (data_get(a[0], &d) < 0)
        return NULL;
    uint64_t total = (uint64_t)d.len;
    if (total == 0) {
        data_put(&d);
        return value_error("an empty message needs no fragments: use offer()");
    }
    if (sent > total) {
        data_put(&d);
        return value_error("sent %llu is past the message's %llu bytes",
                           (unsigned long long)sent, (unsigned long long)total);
    }
    uint64_t tail = put_fragments(self, &d, meta, sent, 0);
    data_put(&d);
    if (tail == self->tail)
        return PyLong_FromUnsignedLongLong(sent);
    uint64_t done = self->frag_sent;
    publish(self, tail, done == total ? 1 : 0, done - sent);
    return PyLong_FromUnsignedLongLong(done);
}

static PyObject *producer_offer_message(Producer *self, PyObject *const *args,
                                        Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *a[2];
    if (data_meta_args(args, nargs, kwnames, a) < 0)
        return NULL;
    if (!attached(&self->v))
        return NULL;
    uint64_t meta;
    if (meta_get(a[1], &meta) < 0)
        return NULL;
    Data d;
    if (data_get(a[0], &d) < 0)
        return NULL;
    uint64_t total = (uint64_t)d.len;
    if (total <= self->v.max_record) {
        data_put(&d);
        long long signal = write_one(self, a[0], a[1]);
        return signal == -2 ? NULL : PyBool_FromLong(signal != -1);
    }
    uint64_t tail = put_fragments(self, &d, meta, 0, 1);
    data_put(&d);
    if (tail == self->tail) {
        note_full(self);
        Py_RETURN_FALSE;
    }
    publish(self, tail, 1, total);
    Py_RETURN_TRUE;
}


/* relay(data, offset, count, key, after, prefix, kinds, sender_bit, corr_bit, relayed_bit)
 *   -> (records taken, offset after them, end of the last, payload bytes, signal)
 *
 * The gateway's inbound hot path: from `data`, records packed as the wire carries them
 * ((end u64, header u64, payload) each, checked by scan_packed), write the plain ones
 * into this ring, each as PREFIX(key, end) + payload with `relayed_bit` added to its
 * meta, publishing once. It stops, leaving the record for the caller's per-record path,
 * at the first one that is not plain: not WHOLE, too long for one record here, not past
 * `after` (seen before), a kind outside the `kinds` bit mask, no sender, a sender not
 * starting with `prefix` (the peer's "node/"), or no room. signal: the consumer's signal
 * word when something was written (the doorbell decision), else -1. */
static PyObject *producer_relay(Producer *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "relay(data, offset, count, key, after, prefix, kinds,"
                                         " sender_bit, corr_bit, relayed_bit)");
        return NULL;
    }
    if (!attached(&self->v))
        return NULL;
    Py_ssize_t offset = PyLong_AsSsize_t(args[1]), count = PyLong_AsSsize_t(args[2]);
    uint64_t key, after, kinds, sender_bit, corr_bit, relayed_bit;
    if ((offset == -1 || count == -1) && PyErr_Occurred())
        return NULL;
    if (u64_get(args[3], &key) < 0 || u64_get(args[4], &after) < 0 ||
        u64_get(args[6], &kinds) < 0 || u64_get(args[7], &sender_bit) < 0 ||
        u64_get(args[8], &corr_bit) < 0 || u64_get(args[9], &relayed_bit) < 0)
        return NULL;
    Data d, pre;
    if (data_get(args[0], &d) < 0)
        return NULL;
    if (data_get(args[5], &pre) < 0) {
        data_put(&d);
        return NULL;
    }
    const uint8_t *p = d.ptr;
    uint64_t size = (uint64_t)d.len, off = (uint64_t)offset;
    uint64_t tail = self->tail, taken = 0, nbytes = 0, written = 0;
    uint64_t max_payload = self->v.max_record - 16;
    while ((Py_ssize_t)taken < count && off + 16 <= size) {
        uint64_t end, header;
        memcpy(&end, p + off, 8);
        memcpy(&header, p + off + 8, 8);
        uint64_t n = header & LEN_MASK, meta = header >> 40;
        if (off + 16 + n > size || ((header >> 32) & 0xFF) != WHOLE || n > max_payload ||
            (int64_t)(end - after) <= 0 || !((kinds >> (meta & 7)) & 1) || !(meta & sender_bit))
            break;
        const uint8_t *body = p + off + 16;
        uint64_t at = (meta & corr_bit) ? 8 : 0;
        if (at >= n)
            break;
        uint64_t slen = body[at];
        if (at + 1 + slen > n || slen < (uint64_t)pre.len ||
            memcmp(body + at + 1, pre.ptr, (size_t)pre.len) != 0)
            break;
        uint64_t rp[2] = {key, end};
        int ok;
        uint64_t next = put(self, tail, rp, 16, body, n, WHOLE, (meta | relayed_bit) & MAX_META, &ok);
        if (!ok) {
            note_full(self);
            break;
        }
        tail = next;
        after = end;
        taken += 1;
        nbytes += n;
        written += n + 16;
        off += 16 + n;
    }
    data_put(&d);
    data_put(&pre);
    long long signal = -1;
    if (taken) {
        publish(self, tail, taken, written);
        signal = (long long)signal_word(self);
    }
    return Py_BuildValue("(KKKKL)", (unsigned long long)taken, (unsigned long long)off,
                         (unsigned long long)after, (unsigned long long)nbytes, signal);
}

static PyObject *producer_close(Producer *self, PyObject *Py_UNUSED(ignored)) {
    if (!attached(&self->v))
        return NULL;
    publish_counters(self);
    st_rel(self->v.words, W_P_CLOSED, 1);
    Py_RETURN_NONE;
}

static PyObject *producer_set_identity(Producer *self, PyObject *const *args,
                                       Py_ssize_t nargs) {
    uint64_t ident, token;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_identity(ident, token)");
        return NULL;
    }
    if (!attached(&self->v) || u64_get(args[0], &ident) < 0 || u64_get(args[1], &token) < 0)
        return NULL;
    st(self->v.words, W_P_ID, ident);
    st(self->v.words, W_P_TOKEN, token);
    Py_RETURN_NONE;
}

static PyObject *producer_publish_counters(Producer *self, PyObject *Py_UNUSED(ignored)) {
    if (!attached(&self->v))
        return NULL;
    publish_counters(self);
    Py_RETURN_NONE;
}

static PyObject *producer_stats(Producer *self, PyObject *Py_UNUSED(ignored)) {
    if (!attached(&self->v))
        return NULL;
    publish_counters(self);
    return view_stats(&self->v);
}

static PyObject *producer_signal(Producer *self, PyObject *Py_UNUSED(ignored)) {
    if (!attached(&self->v))
        return NULL;
    return PyLong_FromUnsignedLongLong(signal_word(self));
}

static PyObject *producer_consumer_waiting(Producer *self, void *c) {
    if (!attached(&self->v))
        return NULL;
    return PyBool_FromLong((ld(self->v.words, W_SIGNAL) & STATE_MASK) == WAITING);
}
static PyObject *producer_consumer_closed(Producer *self, void *c) {
    if (!attached(&self->v))
        return NULL;
    return PyBool_FromLong((ld(self->v.words, W_SIGNAL) & STATE_MASK) == CLOSED);
}
static PyObject *producer_empty(Producer *self, void *c) {
    if (!attached(&self->v))
        return NULL;
    return PyBool_FromLong(ld_acq(self->v.words, W_HEAD) == self->tail);
}
static PyObject *producer_written(Producer *self, void *c) {
    return PyLong_FromUnsignedLongLong(self->msgs);
}
static PyObject *producer_unread(Producer *self, void *c) {
    if (!attached(&self->v))
        return NULL;
    return PyLong_FromLongLong((long long)(self->msgs - ld(self->v.words, W_MSGS_R)));
}
static PyObject *producer_unread_bytes(Producer *self, void *c) {
    if (!attached(&self->v))
        return NULL;
    return PyLong_FromLongLong((long long)(self->tail - ld_acq(self->v.words, W_HEAD)));
}

static PyMethodDef producer_methods[] = {
    {"write", (PyCFunction)(void (*)(void))producer_write, METH_FASTCALL | METH_KEYWORDS,
     "Write and publish one message of at most max_record bytes: FULL or the signal."},
    {"offer", (PyCFunction)(void (*)(void))producer_offer, METH_FASTCALL | METH_KEYWORDS,
     "Write one message and publish it: True, or False when there is no room."},
    {"select", (PyCFunction)producer_select, METH_O, "Write and publish a SELECT record."},
    {"offer_batch", (PyCFunction)producer_offer_batch, METH_O,
     "Write as many (data, meta) messages as fit, publishing the tail once."},
    {"offer_fragments", (PyCFunction)(void (*)(void))producer_offer_fragments, METH_FASTCALL | METH_KEYWORDS,
     "Stream a message of any size: write as many fragments as fit now."},
    {"offer_message", (PyCFunction)(void (*)(void))producer_offer_message, METH_FASTCALL | METH_KEYWORDS,
     "Write a whole message, all or nothing, published at once."},
    {"relay", (PyCFunction)(void (*)(void))producer_relay, METH_FASTCALL,
     "Write the plain records of a packed run, relay-prefixed, publishing once."},
    {"close", (PyCFunction)producer_close, METH_NOARGS, "Tell the consumer: no more."},
    {"set_identity", (PyCFunction)(void (*)(void))producer_set_identity, METH_FASTCALL,
     "Record who writes here."},
    {"publish_counters", (PyCFunction)producer_publish_counters, METH_NOARGS, NULL},
    {"stats", (PyCFunction)producer_stats, METH_NOARGS, "A snapshot of the counters."},
    {"signal", (PyCFunction)producer_signal, METH_NOARGS,
     "Fence, then read the consumer's signal word."},
    {"release", (PyCFunction)view_release, METH_NOARGS, "Drop the buffer."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef producer_getset[] = {
    {"capacity", (getter)get_capacity, NULL, NULL, NULL},
    {"max_record", (getter)get_max_record, NULL, NULL, NULL},
    {"consumer_waiting", (getter)producer_consumer_waiting, NULL, NULL, NULL},
    {"consumer_closed", (getter)producer_consumer_closed, NULL, NULL, NULL},
    {"empty", (getter)producer_empty, NULL, NULL, NULL},
    {"written", (getter)producer_written, NULL, NULL, NULL},
    {"unread", (getter)producer_unread, NULL, NULL, NULL},
    {"unread_bytes", (getter)producer_unread_bytes, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ProducerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mybus_actors._ringcore.Producer",
    .tp_doc = "The writing end of a ring (native core). One thread at a time.",
    .tp_basicsize = sizeof(Producer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)producer_init,
    .tp_dealloc = (destructor)end_dealloc,
    .tp_methods = producer_methods,
    .tp_getset = producer_getset,
};

/* -- what every reading end shares ----------------------------------------------------- */

typedef struct {
    View v;
    uint64_t head;
    uint64_t msgs;
    uint64_t bytes;
    uint64_t sleeps;
} Side;

static void side_attach(Side *self) {
    aword *w = self->v.words;
    self->head = ld_acq(w, W_HEAD);
    self->msgs = ld(w, W_MSGS_R);
    self->bytes = ld(w, W_BYTES_R);
    self->sleeps = ld(w, W_SIGNAL) >> 2;
}

static PyObject *side_producer_closed(Side *self, void *c) {
    if (!attached(&self->v))
        return NULL;
    return PyBool_FromLong(ld_acq(self->v.words, W_P_CLOSED) != 0);
}

static PyObject *side_producer_identity(Side *self, void *c) {
    if (!attached(&self->v))
        return NULL;
    return Py_BuildValue("(KK)", (unsigned long long)ld(self->v.words, W_P_ID),
                         (unsigned long long)ld(self->v.words, W_P_TOKEN));
}

/* Announce (or withdraw) that this reader may sleep. A sequentially consistent store:
 * the caller's re-check of `pending` cannot be ordered before it. */
static PyObject *side_set_waiting(Side *self, PyObject *arg) {
    if (!attached(&self->v))
        return NULL;
    int waiting = PyObject_IsTrue(arg);
    if (waiting < 0)
        return NULL;
    aword *w = self->v.words;
    if (ld(w, W_SIGNAL) != CLOSED) {
        if (waiting) {
            self->sleeps += 1;
            atomic_store(&w[W_SIGNAL], WAITING | (self->sleeps << 2));
        } else {
            atomic_store(&w[W_SIGNAL], RUNNING);
        }
    }
    Py_RETURN_NONE;
}

static PyObject *side_close(Side *self, PyObject *Py_UNUSED(ignored)) {
    if (!attached(&self->v))
        return NULL;
    atomic_store(&self->v.words[W_SIGNAL], CLOSED);
    Py_RETURN_NONE;
}

static PyObject *side_stats(Side *self, PyObject *Py_UNUSED(ignored)) {
    return view_stats(&self->v);
}

/* Free everything before `head` (after the last read of it) and publish the counters. */
static inline void side_release_to(Side *self, uint64_t head) {
    aword *w = self->v.words;
    self->head = head;
    st(w, W_MSGS_R, self->msgs);
    st(w, W_BYTES_R, self->bytes);
    st_rel(w, W_HEAD, head); /* frees the space: the producer may now overwrite it */
}

/* -- the consumer ---------------------------------------------------------------------- */

typedef struct {
    Side s;
    PyObject *frag;      /* bytes being filled (capacity frag_cap), or NULL */
    uint64_t frag_have;  /* bytes of it filled */
    uint64_t frag_cap;
    uint64_t frag_len;   /* the announced total */
    uint64_t frag_meta;
    uint64_t frag_first; /* the end of its FIRST record, which the others name */
    PyObject *selected;  /* the tag of the stream being read (bytes) */
    Py_ssize_t selects;
    int at_select;
} Consumer;

static int consumer_init(Consumer *self, PyObject *args, PyObject *kwds) {
    if (end_init(&self->s.v, args, kwds, "O:Consumer") < 0)
        return -1;
    side_attach(&self->s);
    aword *w = self->s.v.words;
    uint64_t n = ld(w, W_SEL_LEN);
    uint64_t first8 = ld(w, W_SEL_HEAD);
    unsigned char tag[8];
    for (int i = 0; i < 8; i++)
        tag[i] = (unsigned char)(first8 >> (8 * i));
    Py_XSETREF(self->selected, PyBytes_FromStringAndSize((char *)tag, n < 8 ? (Py_ssize_t)n : 8));
    if (self->selected == NULL)
        return -1;
    self->selects = 0;
    self->at_select = 0;
    Py_CLEAR(self->frag);
    return 0;
}

static void consumer_dealloc(Consumer *self) {
    Py_CLEAR(self->frag);
    Py_CLEAR(self->selected);
    end_dealloc(&self->s.v);
}

static PyObject *consumer_finish(Consumer *self) {
    PyObject *frag = self->frag;
    self->frag = NULL;
    if ((uint64_t)PyBytes_GET_SIZE(frag) != self->frag_have &&
        _PyBytes_Resize(&frag, (Py_ssize_t)self->frag_have) < 0)
        return NULL;
    PyObject *meta = PyLong_FromUnsignedLongLong(self->frag_meta);
    if (meta == NULL) {
        Py_DECREF(frag);
        return NULL;
    }
    PyObject *done = PyTuple_Pack(2, meta, frag);
    Py_DECREF(meta);
    Py_DECREF(frag);
    return done;
}

/* Append `len` bytes to the message being reassembled, growing it by doubling (never
 * from the announced total: a corrupt length must fail as RingCorrupted, not as an
 * allocation of it). */
static int frag_append(Consumer *self, const uint8_t *src, uint64_t len) {
    uint64_t need = self->frag_have + len;
    if (need > self->frag_cap) {
        uint64_t cap = self->frag_cap ? self->frag_cap : 4096;
        while (cap < need)
            cap *= 2;
        if (cap > self->frag_len)
            cap = self->frag_len;
        if (_PyBytes_Resize(&self->frag, (Py_ssize_t)cap) < 0)
            return -1; /* frag is NULL now: the message is dropped with the error */
        self->frag_cap = cap;
    }
    copy_bytes(PyBytes_AS_STRING(self->frag) + self->frag_have, src, len);
    self->frag_have = need;
    return 0;
}

/* One fragment record: 1 and *done set when it ends a message, 0 when not, -1 on error. */
static int consumer_fragment(Consumer *self, uint64_t rtype, uint64_t meta,
                             const uint8_t *chunk, uint64_t n, uint64_t end, PyObject **done) {
    if (rtype == FIRST) {
        if (self->frag != NULL || n < FIRST_PREFIX) {
            corrupted("FIRST fragment inside another message");
            return -1;
        }
        uint64_t total;
        memcpy(&total, chunk, 8);
        uint64_t body = n - FIRST_PREFIX;
        if (total > MAX_MESSAGE || body > total) {
            corrupted("fragmented message claims %llu bytes", (unsigned long long)total);
            return -1;
        }
        self->frag = PyBytes_FromStringAndSize(NULL, body ? (Py_ssize_t)body : 1);
        if (self->frag == NULL)
            return -1;
        self->frag_cap = body ? body : 1;
        self->frag_have = 0;
        self->frag_len = total;
        self->frag_meta = meta;
        self->frag_first = end;
        if (frag_append(self, chunk + FIRST_PREFIX, body) < 0)
            return -1;
        if (body == total) {
            *done = consumer_finish(self);
            return *done == NULL ? -1 : 1;
        }
        return 0;
    }
    if (self->frag == NULL || n < NEXT_PREFIX) {
        corrupted("fragment without a FIRST");
        return -1;
    }
    uint64_t first, offset;
    memcpy(&first, chunk, 8);
    memcpy(&offset, chunk + 8, 8);
    uint64_t body = n - NEXT_PREFIX;
    if (first != self->frag_first || offset != self->frag_have) {
        corrupted("fragment of message %llu at %llu, expected %llu at %llu",
                  (unsigned long long)first, (unsigned long long)offset,
                  (unsigned long long)self->frag_first, (unsigned long long)self->frag_have);
        return -1;
    }
    if (self->frag_have + body > self->frag_len) {
        corrupted("fragment longer than announced");
        return -1;
    }
    if (frag_append(self, chunk + NEXT_PREFIX, body) < 0)
        return -1;
    if (rtype == LAST) {
        if (self->frag_have != self->frag_len) {
            corrupted("LAST fragment before the announced length");
            return -1;
        }
        *done = consumer_finish(self);
        return *done == NULL ? -1 : 1;
    }
    return 0;
}

/* A (meta, payload) pair. Small metas come from the interpreter's cache. */
static inline PyObject *pair(uint64_t meta, const uint8_t *p, uint64_t n) {
    PyObject *m = PyLong_FromUnsignedLongLong(meta);
    if (m == NULL)
        return NULL;
    PyObject *b = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
    if (b == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    PyObject *t = PyTuple_New(2);
    if (t == NULL) {
        Py_DECREF(m);
        Py_DECREF(b);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, m);
    PyTuple_SET_ITEM(t, 1, b);
    return t;
}

/* poll(budget=64) -> [(meta, payload), ...] of one stream; the head published once. */
static PyObject *consumer_poll(Consumer *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames) {
    static const char *const names[] = {"budget"};
    Py_ssize_t budget = 64;
    PyObject *a[1] = {NULL};
    if ((kwnames != NULL || nargs > 1) &&
        fast_args(args, nargs, kwnames, names, 1, 0, a, "(budget=64)") < 0)
        return NULL;
    if (kwnames == NULL && nargs == 1)
        a[0] = args[0];
    if (a[0] != NULL && (budget = PyLong_AsSsize_t(a[0])) == -1 && PyErr_Occurred())
        return NULL;
    if (!attached(&self->s.v))
        return NULL;
    self->at_select = 0;
    aword *w = self->s.v.words;
    uint64_t head = self->s.head;
    uint64_t tail = ld_acq(w, W_TAIL);
    PyObject *out = PyList_New(0);
    if (out == NULL || head == tail)
        return out;
    uint8_t *base = self->s.v.base;
    uint64_t cap = self->s.v.capacity, mask = self->s.v.mask;
    uint64_t nbytes = 0;
    int selected = 0;
    while (head != tail && budget > 0) {
        uint64_t off = head & mask;
        uint64_t h = ld_hdr(base, off);
        uint64_t n = h & LEN_MASK, rtype = (h >> 32) & 0xFF;
        uint64_t size = (n + 15) & ~7ULL;
        const uint8_t *s = base + HEADER_SIZE + off + 8;
        if (rtype == WHOLE && size <= cap - off) {
            PyObject *t = pair(h >> 40, s, n);
            if (t == NULL || PyList_Append(out, t) < 0) {
                Py_XDECREF(t);
                goto fail;
            }
            Py_DECREF(t);
            nbytes += n;
            budget -= 1;
            head += size;
        } else if (rtype == PAD && n == cap - off - 8) {
            head += n + 8;
        } else if (rtype == SELECT && n > 0 && n <= MAX_TAG && size <= cap - off) {
            if (PyList_GET_SIZE(out) || selected) {
                self->at_select = 1;
                break; /* the next stream is read by the next poll */
            }
            if (self->frag != NULL) {
                corrupted("SELECT inside a fragmented message");
                goto fail;
            }
            PyObject *tag = PyBytes_FromStringAndSize((const char *)s, (Py_ssize_t)n);
            if (tag == NULL)
                goto fail;
            Py_SETREF(self->selected, tag);
            self->selects += 1;
            uint64_t first8 = 0;
            for (uint64_t i = 0; i < (n < 8 ? n : 8); i++)
                first8 |= (uint64_t)s[i] << (8 * i);
            st(w, W_SEL_LEN, n);
            st(w, W_SEL_HEAD, first8);
            selected = 1;
            head += size;
        } else if (rtype >= FIRST && rtype <= LAST && size <= cap - off) {
            PyObject *done = NULL;
            int r = consumer_fragment(self, rtype, h >> 40, s, n, head + size, &done);
            if (r < 0)
                goto fail;
            if (r) {
                nbytes += (uint64_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(done, 1));
                int a = PyList_Append(out, done);
                Py_DECREF(done);
                if (a < 0)
                    goto fail;
                budget -= 1;
            }
            head += size;
        } else {
            corrupted("bad record header 0x%016llx at position %llu", (unsigned long long)h,
                      (unsigned long long)head);
            goto fail;
        }
        if ((int64_t)(head - tail) > 0) {
            corrupted("record at %llu runs past the tail %llu", (unsigned long long)head,
                      (unsigned long long)tail);
            goto fail;
        }
    }
    self->s.msgs += (uint64_t)PyList_GET_SIZE(out);
    self->s.bytes += nbytes;
    side_release_to(&self->s, head);
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static PyObject *consumer_pending(Consumer *self, void *c) {
    if (!attached(&self->s.v))
        return NULL;
    return PyBool_FromLong(ld_acq(self->s.v.words, W_TAIL) != self->s.head);
}
static PyObject *consumer_partial(Consumer *self, void *c) {
    return PyBool_FromLong(self->frag != NULL);
}
static PyObject *consumer_discard_partial(Consumer *self, PyObject *Py_UNUSED(ignored)) {
    Py_CLEAR(self->frag);
    Py_RETURN_NONE;
}
static PyObject *consumer_selected(Consumer *self, void *c) {
    return Py_NewRef(self->selected);
}
static PyObject *consumer_selects(Consumer *self, void *c) {
    return PyLong_FromSsize_t(self->selects);
}
static PyObject *consumer_at_select(Consumer *self, void *c) {
    return PyBool_FromLong(self->at_select);
}

static PyMethodDef consumer_methods[] = {
    {"poll", (PyCFunction)(void (*)(void))consumer_poll, METH_FASTCALL | METH_KEYWORDS,
     "Read up to budget whole messages of one stream; publish the head once."},
    {"discard_partial", (PyCFunction)consumer_discard_partial, METH_NOARGS,
     "Forget a half-received fragmented message."},
    {"set_waiting", (PyCFunction)side_set_waiting, METH_O, NULL},
    {"close", (PyCFunction)side_close, METH_NOARGS, NULL},
    {"stats", (PyCFunction)side_stats, METH_NOARGS, NULL},
    {"release", (PyCFunction)view_release, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef consumer_getset[] = {
    {"capacity", (getter)get_capacity, NULL, NULL, NULL},
    {"max_record", (getter)get_max_record, NULL, NULL, NULL},
    {"producer_closed", (getter)side_producer_closed, NULL, NULL, NULL},
    {"producer_identity", (getter)side_producer_identity, NULL, NULL, NULL},
    {"pending", (getter)consumer_pending, NULL, NULL, NULL},
    {"partial", (getter)consumer_partial, NULL, NULL, NULL},
    {"selected", (getter)consumer_selected, NULL, NULL, NULL},
    {"selects", (getter)consumer_selects, NULL, NULL, NULL},
    {"at_select", (getter)consumer_at_select, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ConsumerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mybus_actors._ringcore.Consumer",
    .tp_doc = "The reading end that releases what it reads (native core).",
    .tp_basicsize = sizeof(Consumer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)consumer_init,
    .tp_dealloc = (destructor)consumer_dealloc,
    .tp_methods = consumer_methods,
    .tp_getset = consumer_getset,
};

/* -- the reader (reads without releasing: the gateway's outbox) ------------------------ */

typedef struct {
    uint64_t end;
    uint64_t size;
    uint64_t whole; /* 1 when the record ends a message */
} Unreleased;

typedef struct {
    Side s;
    uint64_t read;
    Unreleased *q; /* a circular queue of what was read and not released */
    size_t q_cap, q_start, q_len;
} Reader;

static int reader_init(Reader *self, PyObject *args, PyObject *kwds) {
    if (end_init(&self->s.v, args, kwds, "O:Reader") < 0)
        return -1;
    side_attach(&self->s);
    self->read = self->s.head;
    self->q_start = self->q_len = 0;
    return 0;
}

static void reader_dealloc(Reader *self) {
    PyMem_Free(self->q);
    self->q = NULL;
    end_dealloc(&self->s.v);
}

static inline Unreleased *q_at(Reader *self, size_t i) {
    return &self->q[(self->q_start + i) % self->q_cap];
}

static int q_push(Reader *self, uint64_t end, uint64_t size, uint64_t whole) {
    if (self->q_len == self->q_cap) {
        size_t cap = self->q_cap ? self->q_cap * 2 : 64;
        Unreleased *q = PyMem_Malloc(cap * sizeof *q);
        if (q == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (size_t i = 0; i < self->q_len; i++)
            q[i] = *q_at(self, i);
        PyMem_Free(self->q);
        self->q = q;
        self->q_cap = cap;
        self->q_start = 0;
    }
    Unreleased *u = &self->q[(self->q_start + self->q_len) % self->q_cap];
    u->end = end;
    u->size = size;
    u->whole = whole;
    self->q_len += 1;
    return 0;
}

/* The next record from *pos before `stop`, padding skipped: 1 with *pos moved past it,
 * its header, where its payload starts in the buffer and its length; 0 at `stop`; -1
 * (RingCorrupted set) at a header no producer of this layout writes. */
static int next_record(Reader *self, uint64_t *pos, uint64_t stop, uint64_t *header,
                       uint64_t *at, uint64_t *len) {
    uint8_t *base = self->s.v.base;
    uint64_t cap = self->s.v.capacity, mask = self->s.v.mask;
    while (*pos != stop) {
        uint64_t off = *pos & mask;
        uint64_t h = ld_hdr(base, off);
        uint64_t n = h & LEN_MASK, rtype = (h >> 32) & 0xFF;
        uint64_t size = (n + 15) & ~7ULL;
        if (rtype == PAD && n == cap - off - 8) {
            *pos += n + 8;
            continue;
        }
        if (rtype < WHOLE || rtype > LAST || size > cap - off || (int64_t)(*pos + size - stop) > 0) {
            corrupted("bad record header 0x%016llx at position %llu", (unsigned long long)h,
                      (unsigned long long)*pos);
            return -1;
        }
        *pos += size;
        *header = h;
        *at = HEADER_SIZE + off + 8;
        *len = n;
        return 1;
    }
    return 0;
}

static inline int ends_message(uint64_t header) {
    uint64_t rtype = (header >> 32) & 0xFF;
    return rtype == WHOLE || rtype == LAST;
}

/* Records from `pos` up to `stop` (at most `budget`, and past the first no more than
 * `max_bytes` of payload): each (end, header, payload) appended to a list and, when
 * `take`, queued as unreleased with the read position moved past it. */
static PyObject *reader_records_from(Reader *self, uint64_t pos, uint64_t stop,
                                     Py_ssize_t budget, uint64_t max_bytes, int take) {
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    uint64_t taken = 0, h, at, n;
    while (budget > 0) {
        uint64_t next = pos;
        int r = next_record(self, &next, stop, &h, &at, &n);
        if (r < 0) {
            Py_DECREF(out);
            return NULL;
        }
        if (r == 0 || (taken && taken + n > max_bytes))
            break;
        pos = next;
        taken += n;
        budget -= 1;
        PyObject *rec = Py_BuildValue("(KKy#)", (unsigned long long)pos, (unsigned long long)h,
                                      (const char *)(self->s.v.base + at), (Py_ssize_t)n);
        if (rec == NULL || PyList_Append(out, rec) < 0) {
            Py_XDECREF(rec);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(rec);
        if (take) {
            if (q_push(self, pos, n, ends_message(h)) < 0) {
                Py_DECREF(out);
                return NULL;
            }
            self->read = pos;
        }
    }
    return out;
}

static PyObject *reader_peek(Reader *self, PyObject *args, PyObject *kwds) {
    Py_ssize_t budget = 64;
    unsigned long long max_bytes = 1 << 20;
    static char *kwlist[] = {"budget", "max_bytes", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|nK:peek", kwlist, &budget, &max_bytes))
        return NULL;
    if (!attached(&self->s.v))
        return NULL;
    uint64_t tail = ld_acq(self->s.v.words, W_TAIL);
    return reader_records_from(self, self->read, tail, budget, max_bytes, 1);
}


/* peek_packed(budget=64, max_bytes=1<<20) -> (data, count): what peek reads, packed as
 * the wire carries records ((end u64, header u64, payload) each, back to back) in one
 * bytes object: the gateway's outbound hot path, one object per run. */
static PyObject *reader_peek_packed(Reader *self, PyObject *args, PyObject *kwds) {
    Py_ssize_t budget = 64;
    unsigned long long max_bytes = 1 << 20;
    static char *kwlist[] = {"budget", "max_bytes", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|nK:peek_packed", kwlist, &budget, &max_bytes))
        return NULL;
    if (!attached(&self->s.v))
        return NULL;
    uint64_t stop = ld_acq(self->s.v.words, W_TAIL);
    /* First pass: how many records and bytes. A bad header ends the run there; it is
     * reported only when it comes first (what came before it goes out first). */
    uint64_t pos = self->read, taken = 0, total = 0, h, at, n;
    Py_ssize_t count = 0;
    while (count < budget) {
        uint64_t next = pos;
        int r = next_record(self, &next, stop, &h, &at, &n);
        if (r < 0) {
            if (count == 0)
                return NULL;
            PyErr_Clear();
            break;
        }
        if (r == 0 || (taken && taken + n > max_bytes))
            break;
        pos = next;
        taken += n;
        total += 16 + n;
        count += 1;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (out == NULL)
        return NULL;
    /* Second pass, over records just checked: copy each once, from the ring. */
    uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
    pos = self->read;
    for (Py_ssize_t i = 0; i < count; i++) {
        next_record(self, &pos, stop, &h, &at, &n);
        memcpy(dst, &pos, 8);
        memcpy(dst + 8, &h, 8);
        copy_bytes(dst + 16, self->s.v.base + at, n);
        dst += 16 + n;
        if (q_push(self, pos, n, ends_message(h)) < 0) {
            Py_DECREF(out);
            return NULL;
        }
        self->read = pos;
    }
    PyObject *r = Py_BuildValue("(On)", out, count);
    Py_DECREF(out);
    return r;
}

static PyObject *reader_records(Reader *self, PyObject *args, PyObject *kwds) {
    PyObject *start = Py_None, *end = Py_None;
    static char *kwlist[] = {"start", "end", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OO:records", kwlist, &start, &end))
        return NULL;
    if (!attached(&self->s.v))
        return NULL;
    uint64_t from = self->s.head, stop = self->read;
    if (start != Py_None && u64_get(start, &from) < 0)
        return NULL;
    if (end != Py_None && u64_get(end, &stop) < 0)
        return NULL;
    return reader_records_from(self, from, stop, PY_SSIZE_T_MAX, UINT64_MAX, 0);
}

static PyObject *reader_release_to(Reader *self, PyObject *arg) {
    uint64_t pos;
    if (!attached(&self->s.v) || u64_get(arg, &pos) < 0)
        return NULL;
    if ((int64_t)(pos - self->s.head) <= 0)
        return PyLong_FromLong(0);
    if ((int64_t)(pos - self->read) > 0)
        return value_error("cannot release up to %llu: only read up to %llu",
                           (unsigned long long)pos, (unsigned long long)self->read);
    /* Find the record ending at pos before changing anything. */
    size_t count = 0;
    int found = 0;
    while (count < self->q_len && (int64_t)(q_at(self, count)->end - pos) <= 0) {
        count += 1;
        if (q_at(self, count - 1)->end == pos) {
            found = 1;
            break;
        }
    }
    if (!found)
        return value_error("%llu is not the end of a record read", (unsigned long long)pos);
    uint64_t msgs = 0, nbytes = 0;
    for (size_t i = 0; i < count; i++) {
        msgs += q_at(self, i)->whole;
        nbytes += q_at(self, i)->size;
    }
    self->q_start = (self->q_start + count) % self->q_cap;
    self->q_len -= count;
    self->s.msgs += msgs;
    self->s.bytes += nbytes;
    side_release_to(&self->s, pos);
    return PyLong_FromSize_t(count);
}

static PyObject *reader_rewind(Reader *self, PyObject *Py_UNUSED(ignored)) {
    self->read = self->s.head;
    self->q_start = self->q_len = 0;
    Py_RETURN_NONE;
}

static PyObject *reader_rewind_to(Reader *self, PyObject *arg) {
    uint64_t pos;
    if (u64_get(arg, &pos) < 0)
        return NULL;
    if ((int64_t)(pos - self->s.head) <= 0)
        return reader_rewind(self, NULL);
    if ((int64_t)(pos - self->read) >= 0)
        Py_RETURN_NONE;
    size_t keep = self->q_len;
    while (keep && (int64_t)(q_at(self, keep - 1)->end - pos) > 0)
        keep -= 1;
    self->q_len = keep;
    if (!keep || q_at(self, keep - 1)->end != pos)
        return value_error("%llu is not the end of a record read", (unsigned long long)pos);
    self->read = pos;
    Py_RETURN_NONE;
}

static PyObject *reader_head(Reader *self, void *c) {
    return PyLong_FromUnsignedLongLong(self->s.head);
}
static PyObject *reader_position(Reader *self, void *c) {
    return PyLong_FromUnsignedLongLong(self->read);
}
static PyObject *reader_tail(Reader *self, void *c) {
    if (!attached(&self->s.v))
        return NULL;
    return PyLong_FromUnsignedLongLong(ld_acq(self->s.v.words, W_TAIL));
}
static PyObject *reader_pending(Reader *self, void *c) {
    if (!attached(&self->s.v))
        return NULL;
    return PyBool_FromLong(ld_acq(self->s.v.words, W_TAIL) != self->read);
}
static PyObject *reader_unreleased(Reader *self, void *c) {
    if (!attached(&self->s.v))
        return NULL;
    return PyBool_FromLong(ld_acq(self->s.v.words, W_TAIL) != self->s.head);
}

static PyMethodDef reader_methods[] = {
    {"peek", (PyCFunction)(void (*)(void))reader_peek, METH_VARARGS | METH_KEYWORDS,
     "Read records from the read position, releasing nothing."},
    {"peek_packed", (PyCFunction)(void (*)(void))reader_peek_packed,
     METH_VARARGS | METH_KEYWORDS, "Like peek, the records packed in one bytes object."},
    {"records", (PyCFunction)(void (*)(void))reader_records, METH_VARARGS | METH_KEYWORDS,
     "Read records again between two positions without moving anything."},
    {"release_to", (PyCFunction)reader_release_to, METH_O,
     "Free everything up to the end of a record already read."},
    {"rewind", (PyCFunction)reader_rewind, METH_NOARGS, "Read again from the head."},
    {"rewind_to", (PyCFunction)reader_rewind_to, METH_O, "Read again from a record end."},
    {"set_waiting", (PyCFunction)side_set_waiting, METH_O, NULL},
    {"close", (PyCFunction)side_close, METH_NOARGS, NULL},
    {"stats", (PyCFunction)side_stats, METH_NOARGS, NULL},
    {"release", (PyCFunction)view_release, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef reader_getset[] = {
    {"capacity", (getter)get_capacity, NULL, NULL, NULL},
    {"max_record", (getter)get_max_record, NULL, NULL, NULL},
    {"producer_closed", (getter)side_producer_closed, NULL, NULL, NULL},
    {"producer_identity", (getter)side_producer_identity, NULL, NULL, NULL},
    {"head", (getter)reader_head, NULL, NULL, NULL},
    {"position", (getter)reader_position, NULL, NULL, NULL},
    {"tail", (getter)reader_tail, NULL, NULL, NULL},
    {"pending", (getter)reader_pending, NULL, NULL, NULL},
    {"unreleased", (getter)reader_unreleased, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mybus_actors._ringcore.Reader",
    .tp_doc = "A reading end that frees space only when told (native core).",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)reader_init,
    .tp_dealloc = (destructor)reader_dealloc,
    .tp_methods = reader_methods,
    .tp_getset = reader_getset,
};


/* -- packed records (a run as the wire carries it) ------------------------------------- */

/* scan_packed(data, offset, count, start) -> the offset after `count` records packed at
 * `offset`: each (end u64, header u64, payload), of a type a run carries (WHOLE to
 * LAST), its end far enough past the previous one (from `start`) to hold it in a ring.
 * RemoteProtocolError says what is wrong otherwise. */
static PyObject *scan_packed(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "scan_packed(data, offset, count, start)");
        return NULL;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(args[1]), count = PyLong_AsSsize_t(args[2]);
    uint64_t pos;
    if (((offset == -1 || count == -1) && PyErr_Occurred()) || u64_get(args[3], &pos) < 0)
        return NULL;
    Data d;
    if (data_get(args[0], &d) < 0)
        return NULL;
    uint64_t size = (uint64_t)d.len, off = (uint64_t)offset;
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (size < off + 16) {
            PyErr_Format(RemoteProtocolError, "DATA frame truncated: record end and header"
                         " needs 16 bytes, %lld left in the body", (long long)(size - off));
            goto done;
        }
        uint64_t end, header;
        memcpy(&end, d.ptr + off, 8);
        memcpy(&header, d.ptr + off + 8, 8);
        uint64_t n = header & LEN_MASK, rtype = (header >> 32) & 0xFF;
        if (rtype < WHOLE || rtype > LAST) {
            PyErr_Format(RemoteProtocolError, "record of type %d in a run", (int)rtype);
            goto done;
        }
        uint64_t need = 8 + ((n + 7) & ~7ULL);
        if (end < pos || end - pos < need) {
            char msg[160];
            snprintf(msg, sizeof msg, "record ending at %llu does not fit after %llu",
                     (unsigned long long)end, (unsigned long long)pos);
            PyErr_SetString(RemoteProtocolError, msg);
            goto done;
        }
        if (size - off - 16 < n) {
            PyErr_Format(RemoteProtocolError, "DATA frame truncated: record payload needs"
                         " %lld bytes, %lld left in the body", (long long)n,
                         (long long)(size - off - 16));
            goto done;
        }
        off += 16 + n;
        pos = end;
    }
    result = PyLong_FromUnsignedLongLong(off);
done:
    data_put(&d);
    return result;
}

/* unpack_packed(data, offset, count) -> [(end, header, payload), ...] (already scanned). */
static PyObject *unpack_packed(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "unpack_packed(data, offset, count)");
        return NULL;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(args[1]), count = PyLong_AsSsize_t(args[2]);
    if ((offset == -1 || count == -1) && PyErr_Occurred())
        return NULL;
    Data d;
    if (data_get(args[0], &d) < 0)
        return NULL;
    PyObject *out = PyList_New(0);
    uint64_t size = (uint64_t)d.len, off = (uint64_t)offset;
    for (Py_ssize_t i = 0; out != NULL && i < count; i++) {
        uint64_t end, header;
        if (off + 16 > size)
            goto short_;
        memcpy(&end, d.ptr + off, 8);
        memcpy(&header, d.ptr + off + 8, 8);
        uint64_t n = header & LEN_MASK;
        if (off + 16 + n > size)
            goto short_;
        PyObject *rec = Py_BuildValue("(KKy#)", (unsigned long long)end,
                                      (unsigned long long)header,
                                      (const char *)(d.ptr + off + 16), (Py_ssize_t)n);
        if (rec == NULL || PyList_Append(out, rec) < 0) {
            Py_XDECREF(rec);
            Py_CLEAR(out);
            break;
        }
        Py_DECREF(rec);
        off += 16 + n;
    }
    data_put(&d);
    return out;
short_:
    data_put(&d);
    Py_DECREF(out);
    PyErr_SetString(PyExc_ValueError, "packed records run past their data (not scanned?)");
    return NULL;
}

/* relayed.strip_run in C: the records that go on a run of one stream, as a receiver
 * strips a gateway's batch. It stops at the first record it does not take (another
 * stream, a position not past the last, a blob, not relayed, a payload not bytes), which
 * the Python caller then reads itself. */
#define RELAYED_BIT (1ULL << 23)
#define BLOB_BIT (1ULL << 22)
#define INNER_META_MASK (BLOB_BIT - 1)

static PyObject *strip_run(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyList_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError, "strip_run(items, index, stream, last, out: list)");
        return NULL;
    }
    PyObject *items = args[0], *out = args[4];
    Py_ssize_t index = PyLong_AsSsize_t(args[1]);
    unsigned long long stream = PyLong_AsUnsignedLongLong(args[2]);
    unsigned long long last = PyLong_AsUnsignedLongLong(args[3]);
    if (PyErr_Occurred())
        return NULL;
    Py_ssize_t n = PySequence_Length(items);
    if (n < 0)
        return NULL;
    int list = PyList_CheckExact(items) || PyTuple_CheckExact(items);
    while (list && index >= 0 && index < n) {
        PyObject *item = PyList_CheckExact(items) ? PyList_GET_ITEM(items, index)
                                                  : PyTuple_GET_ITEM(items, index);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2)
            break;
        PyObject *meta_obj = PyTuple_GET_ITEM(item, 0), *payload = PyTuple_GET_ITEM(item, 1);
        if (!PyLong_CheckExact(meta_obj) || !PyBytes_CheckExact(payload))
            break;
        unsigned long long meta = PyLong_AsUnsignedLongLong(meta_obj);
        if (meta == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear(); /* negative or huge: the Python caller says what it is */
            break;
        }
        Py_ssize_t size = PyBytes_GET_SIZE(payload);
        if ((meta & (RELAYED_BIT | BLOB_BIT)) != RELAYED_BIT || size < 16)
            break;
        const char *data = PyBytes_AS_STRING(payload);
        uint64_t key = 0, position = 0; /* little-endian, as relayed.PREFIX packs them */
        for (int b = 7; b >= 0; b--) {
            key = (key << 8) | (unsigned char)data[b];
            position = (position << 8) | (unsigned char)data[8 + b];
        }
        if (key != stream || position <= last)
            break;
        PyObject *inner = PyLong_FromUnsignedLongLong(meta & INNER_META_MASK);
        PyObject *body = inner == NULL ? NULL : PyBytes_FromStringAndSize(data + 16, size - 16);
        PyObject *rec = body == NULL ? NULL : PyTuple_Pack(2, inner, body);
        Py_XDECREF(inner);
        Py_XDECREF(body);
        if (rec == NULL || PyList_Append(out, rec) < 0) {
            Py_XDECREF(rec);
            return NULL;
        }
        Py_DECREF(rec);
        last = position;
        index++;
    }
    return Py_BuildValue("(nK)", index, last);
}

/* -- the send fast path ---------------------------------------------------------------- */

/* Sender(chan_type, chans, slow, after_write, maintain, timeout): a callable with
 * outbound.Outbound.send's signature (sender, to, data, meta=0, *, timeout, block) that
 * does that method's common case without a Python frame: the channel is in `chans`, its
 * receiver's liveness check is not due, the ring's SELECT names it, the receiver does
 * not hold it back, and the message fits one record. Anything else is `slow(...)`, the
 * Python method itself, with the same arguments. After a write whose signal word is
 * not zero (no room, the receiver sleeps, it closed), `after_write(chan, signal, sender,
 * to, data, meta, timeout, block)` does what the method does then. Every 1024 fast
 * sends it calls `maintain()`, as the method does.
 *
 * It reads the channel's __slots__ by their offsets: the channel stays one Python class
 * for both cores, and the Python send and the C one read the same fields. The liveness
 * deadline is on CLOCK_MONOTONIC, so the Python side uses it only when the endpoint's
 * clock is time.monotonic (the same clock on Linux). */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyTypeObject *chan_type;
    PyObject *chans;
    PyObject *slow;
    PyObject *after;
    PyObject *maintain;
    PyObject *timeout; /* the method's default */
    Py_ssize_t off_current, off_id, off_next_check, off_page, off_write;
    uint64_t sends;
} Sender;

static PyObject *zero; /* the int 0: meta when not given */

static PyObject *sender_call(Sender *self, PyObject *const *args, size_t nargsf,
                             PyObject *kwnames);

static Py_ssize_t slot_offset(PyTypeObject *type, const char *name) {
    PyObject *d = PyDict_GetItemString(type->tp_dict, name);
    if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type) ||
        ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
        PyErr_Format(PyExc_TypeError, "%s has no __slots__ entry %s", type->tp_name, name);
        return -1;
    }
    return ((PyMemberDescrObject *)d)->d_member->offset;
}

static inline PyObject *slot(PyObject *obj, Py_ssize_t off) {
    return *(PyObject **)((char *)obj + off);
}

static int sender_init(Sender *self, PyObject *args, PyObject *kwds) {
    PyObject *type, *chans, *slow, *after, *maintain, *timeout;
    static char *kwlist[] = {"chan_type", "chans", "slow", "after_write", "maintain",
                             "timeout", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!OOOO:Sender", kwlist, &PyType_Type,
                                     &type, &PyDict_Type, &chans, &slow, &after, &maintain,
                                     &timeout))
        return -1;
    PyTypeObject *t = (PyTypeObject *)type;
    if ((self->off_current = slot_offset(t, "current")) < 0 ||
        (self->off_id = slot_offset(t, "id")) < 0 ||
        (self->off_next_check = slot_offset(t, "next_check")) < 0 ||
        (self->off_page = slot_offset(t, "page")) < 0 ||
        (self->off_write = slot_offset(t, "write")) < 0)
        return -1;
    Py_INCREF(type);
    Py_XSETREF(self->chan_type, t);
    Py_INCREF(chans);
    Py_XSETREF(self->chans, chans);
    Py_INCREF(slow);
    Py_XSETREF(self->slow, slow);
    Py_INCREF(after);
    Py_XSETREF(self->after, after);
    Py_INCREF(maintain);
    Py_XSETREF(self->maintain, maintain);
    Py_INCREF(timeout);
    Py_XSETREF(self->timeout, timeout);
    self->sends = 0;
    return 0;
}

static int sender_traverse(Sender *self, visitproc visit, void *arg) {
    Py_VISIT(self->chan_type);
    Py_VISIT(self->chans);
    Py_VISIT(self->slow);
    Py_VISIT(self->after);
    Py_VISIT(self->maintain);
    Py_VISIT(self->timeout);
    return 0;
}

static int sender_clear(Sender *self) {
    Py_CLEAR(self->chan_type);
    Py_CLEAR(self->chans);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->after);
    Py_CLEAR(self->maintain);
    Py_CLEAR(self->timeout);
    return 0;
}

static void sender_dealloc(Sender *self) {
    PyObject_GC_UnTrack(self);
    sender_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *sender_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Sender *self = (Sender *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->vectorcall = (vectorcallfunc)sender_call;
    return (PyObject *)self;
}

/* time.monotonic() as Python computes it on Linux. */
static inline double monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)((int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec) / 1e9;
}

/* The channel's state byte on the receiver's page (OPEN is 0), or -1: not readable. */
static int page_state(PyObject *page, PyObject *id) {
    Py_ssize_t i = PyLong_AsSsize_t(id);
    if (i == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    Py_buffer b;
    if (PyObject_GetBuffer(page, &b, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        return -1;
    }
    int state = i >= 0 && i < b.len ? ((volatile uint8_t *)b.buf)[i] : -1;
    PyBuffer_Release(&b);
    return state;
}

static PyObject *sender_call(Sender *self, PyObject *const *args, size_t nargsf,
                             PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *timeout = self->timeout, *block = Py_True;
    if (nargs < 3 || nargs > 4)
        goto slow;
    if (kwnames != NULL) {
        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(kwnames); j++) {
            PyObject *key = PyTuple_GET_ITEM(kwnames, j);
            if (PyUnicode_CompareWithASCIIString(key, "timeout") == 0)
                timeout = args[nargs + j];
            else if (PyUnicode_CompareWithASCIIString(key, "block") == 0)
                block = args[nargs + j];
            else
                goto slow;
        }
    }
    PyObject *key = PyTuple_Pack(2, args[0], args[1]);
    if (key == NULL)
        return NULL;
    PyObject *c = PyDict_GetItemWithError(self->chans, key);
    Py_DECREF(key);
    if (c == NULL) {
        if (PyErr_Occurred())
            return NULL;
        goto slow;
    }
    if (!Py_IS_TYPE(c, self->chan_type))
        goto slow;
    Py_INCREF(c); /* what follows may drop it from chans */
    /* The clock first: a due check finds a ring another process truncated before
     * anything of it (the channel page too) is touched. */
    PyObject *next_check = slot(c, self->off_next_check);
    if (next_check == NULL || !PyFloat_CheckExact(next_check) ||
        monotonic() >= PyFloat_AS_DOUBLE(next_check))
        goto slow_c;
    if (slot(c, self->off_current) != Py_True)
        goto slow_c;
    PyObject *page = slot(c, self->off_page), *id = slot(c, self->off_id);
    if (page == NULL || id == NULL || page_state(page, id) != 0)
        goto slow_c;
    PyObject *write = slot(c, self->off_write);
    if (write == NULL || !PyCFunction_Check(write))
        goto slow_c;
    PyObject *prod = PyCFunction_GET_SELF(write);
    if (prod == NULL || !Py_IS_TYPE(prod, &ProducerType))
        goto slow_c;
    Producer *p = (Producer *)prod;
    if (p->v.base == NULL)
        goto slow_c;
    PyObject *metaobj = nargs == 4 ? args[3] : zero;
    uint64_t meta;
    if (meta_get(metaobj, &meta) < 0) {
        PyErr_Clear(); /* the method raises it, with its own message */
        goto slow_c;
    }
    Data d;
    if (data_get(args[2], &d) < 0) {
        PyErr_Clear();
        goto slow_c;
    }
    uint64_t n = (uint64_t)d.len;
    if (n > p->v.max_record) { /* fragments: the method's */
        data_put(&d);
        goto slow_c;
    }
    int ok;
    uint64_t tail = put(p, p->tail, NULL, 0, d.ptr, n, WHOLE, meta, &ok);
    data_put(&d);
    long long signal;
    if (ok) {
        publish(p, tail, 1, n);
        signal = (long long)signal_word(p);
    } else {
        note_full(p);
        signal = -1;
    }
    if (signal != 0) {
        PyObject *sig = PyLong_FromLongLong(signal);
        if (sig == NULL) {
            Py_DECREF(c);
            return NULL;
        }
        PyObject *a[8] = {c, sig, args[0], args[1], args[2], metaobj, timeout, block};
        PyObject *r = PyObject_Vectorcall(self->after, a, 8, NULL);
        Py_DECREF(sig);
        if (r == NULL) {
            Py_DECREF(c);
            return NULL;
        }
        Py_DECREF(r);
    }
    Py_DECREF(c);
    if (!(++self->sends & 1023)) {
        PyObject *r = PyObject_CallNoArgs(self->maintain);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
slow_c:
    Py_DECREF(c);
slow:
    return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
}

static PyTypeObject SenderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mybus_actors._ringcore.Sender",
    .tp_doc = "Outbound.send's common case in C; anything else is the Python method.",
    .tp_basicsize = sizeof(Sender),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Sender, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = sender_new,
    .tp_init = (initproc)sender_init,
    .tp_traverse = (traverseproc)sender_traverse,
    .tp_clear = (inquiry)sender_clear,
    .tp_dealloc = (destructor)sender_dealloc,
};

/* -- the encode fast path -------------------------------------------------------------- */

/* Encoder(slow, dumps, protocol, pickle_meta, prefix, has_correlation, has_sender,
 * kinds, correlated): a callable with codec.encode's signature that does its common
 * calls in C: one positional message, with or without an envelope given by keyword
 * (kind, sender, correlation_id). `bytes` travel as they are; anything but a bytearray
 * or a memoryview is `dumps(message, protocol)` (pickle_meta). An envelope is what
 * encode_python writes: the kind's bits, then the 8-byte little-endian correlation id
 * (HAS_CORRELATION: for a correlated kind, or a non-zero id), then `prefix(sender)`
 * (HAS_SENDER), then the payload. `kinds` and `correlated` are bit masks of kind
 * values. Everything else (an unknown keyword, an odd kind or id, a sender `prefix`
 * refuses, a message plain pickle refuses: cloudpickle's turn) is `slow(...)`, codec's
 * Python encode, which raises what it should. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *slow;
    PyObject *dumps;
    PyObject *protocol;
    PyObject *pickle_meta;
    PyObject *prefix; /* None: every envelope goes to `slow` */
    long has_correlation, has_sender, kinds, correlated;
} Encoder;

static PyObject *kw_kind, *kw_sender, *kw_correlation_id; /* interned at module init */
static PyObject *str_release;                             /* "release", interned too */
static PyObject *kwnames_sender;                          /* ("sender",) */
static PyObject *ActorNotFound;
#define SMALL_PAYLOAD 4096 /* bytes up to which a payload to unpickle is copied */

static int kw_is(PyObject *name, PyObject *interned) {
    return name == interned || PyUnicode_Compare(name, interned) == 0;
}

/* The payload of `message`: a new reference to its bytes, with *tag_bits set; NULL
 * with no exception set when `slow` must take it; NULL with one for a BaseException
 * that is not an Exception (KeyboardInterrupt and the like go through). */
static PyObject *encoder_payload(Encoder *self, PyObject *message, long *tag_bits) {
    if (PyBytes_CheckExact(message)) {
        *tag_bits = 0;
        return Py_NewRef(message);
    }
    if (Py_IS_TYPE(message, &PyByteArray_Type) || Py_IS_TYPE(message, &PyMemoryView_Type))
        return NULL;
    PyObject *a[2] = {message, self->protocol};
    PyObject *body = PyObject_Vectorcall(self->dumps, a, 2, NULL);
    if (body == NULL) {
        if (PyErr_ExceptionMatches(PyExc_Exception))
            PyErr_Clear();
        return NULL;
    }
    if (!PyBytes_CheckExact(body)) {
        Py_DECREF(body);
        return NULL;
    }
    *tag_bits = PyLong_AsLong(self->pickle_meta);
    return body;
}

static PyObject *encoder_slow(Encoder *self, PyObject *const *args, size_t nargsf,
                              PyObject *kwnames) {
    if (PyErr_Occurred())
        return NULL;
    return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
}

static PyObject *encoder_call(Encoder *self, PyObject *const *args, size_t nargsf,
                              PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 1)
        return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
    PyObject *message = args[0];
    long kind = 0;
    unsigned long long corr = 0;
    PyObject *sender = Py_None;
    if (kwnames != NULL) {
        if (self->prefix == Py_None)
            return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
        Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nkw; i++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, i), *value = args[1 + i];
            if (kw_is(name, kw_kind)) {
                if (!PyLong_Check(value))
                    return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
                kind = PyLong_AsLong(value);
                if ((kind == -1 && PyErr_Occurred()) || kind < 0 || kind > 30 ||
                    !(self->kinds & (1L << kind))) {
                    PyErr_Clear();
                    return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
                }
            } else if (kw_is(name, kw_correlation_id)) {
                if (!PyLong_Check(value))
                    return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
                corr = PyLong_AsUnsignedLongLong(value);
                if (corr == (unsigned long long)-1 && PyErr_Occurred()) {
                    PyErr_Clear();
                    return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
                }
            } else if (kw_is(name, kw_sender)) {
                if (value != Py_None && !PyUnicode_CheckExact(value))
                    return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
                sender = value;
            } else {
                if (PyErr_Occurred())
                    return NULL;
                return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
            }
        }
    }
    long tag_bits = 0;
    PyObject *payload = encoder_payload(self, message, &tag_bits);
    if (payload == NULL)
        return encoder_slow(self, args, nargsf, kwnames);
    int with_corr = corr != 0 || (self->correlated & (1L << kind));
    if (!with_corr && sender == Py_None) {
        PyObject *meta = PyLong_FromLong(tag_bits | kind);
        PyObject *out = meta == NULL ? NULL : PyTuple_Pack(2, meta, payload);
        Py_XDECREF(meta);
        Py_DECREF(payload);
        return out;
    }
    PyObject *prefix = NULL;
    if (sender != Py_None) {
        prefix = PyObject_CallOneArg(self->prefix, sender);
        if (prefix == NULL || !PyBytes_CheckExact(prefix)) {
            Py_XDECREF(prefix);
            Py_DECREF(payload);
            if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception))
                return NULL;
            PyErr_Clear(); /* the Python encode raises the same, in its own order */
            return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
        }
    }
    Py_ssize_t np = prefix == NULL ? 0 : PyBytes_GET_SIZE(prefix);
    Py_ssize_t nc = with_corr ? 8 : 0;
    Py_ssize_t nb = PyBytes_GET_SIZE(payload);
    PyObject *body = PyBytes_FromStringAndSize(NULL, nc + np + nb);
    if (body == NULL) {
        Py_XDECREF(prefix);
        Py_DECREF(payload);
        return NULL;
    }
    char *out_bytes = PyBytes_AS_STRING(body);
    if (with_corr)
        for (int b = 0; b < 8; b++)
            out_bytes[b] = (char)((corr >> (8 * b)) & 0xFF); /* little-endian, any host */
    if (np)
        memcpy(out_bytes + nc, PyBytes_AS_STRING(prefix), (size_t)np);
    memcpy(out_bytes + nc + np, PyBytes_AS_STRING(payload), (size_t)nb);
    Py_XDECREF(prefix);
    Py_DECREF(payload);
    long meta_bits = tag_bits | kind | (with_corr ? self->has_correlation : 0) |
                     (np ? self->has_sender : 0);
    PyObject *meta = PyLong_FromLong(meta_bits);
    PyObject *out = meta == NULL ? NULL : PyTuple_Pack(2, meta, body);
    Py_XDECREF(meta);
    Py_DECREF(body);
    return out;
}

static PyObject *encoder_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Encoder *self = (Encoder *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->vectorcall = (vectorcallfunc)encoder_call;
        self->prefix = Py_NewRef(Py_None);
    }
    return (PyObject *)self;
}

static int encoder_init(Encoder *self, PyObject *args, PyObject *kwds) {
    PyObject *slow, *dumps, *protocol, *pickle_meta, *prefix = Py_None;
    long has_correlation = 0, has_sender = 0, kinds = 0, correlated = 0;
    static char *kwlist[] = {"slow", "dumps", "protocol", "pickle_meta", "prefix",
                             "has_correlation", "has_sender", "kinds", "correlated", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO!O!|Ollll:Encoder", kwlist, &slow,
                                     &dumps, &PyLong_Type, &protocol, &PyLong_Type,
                                     &pickle_meta, &prefix, &has_correlation, &has_sender,
                                     &kinds, &correlated))
        return -1;
    Py_INCREF(slow);
    Py_XSETREF(self->slow, slow);
    Py_INCREF(dumps);
    Py_XSETREF(self->dumps, dumps);
    Py_INCREF(protocol);
    Py_XSETREF(self->protocol, protocol);
    Py_INCREF(pickle_meta);
    Py_XSETREF(self->pickle_meta, pickle_meta);
    Py_INCREF(prefix);
    Py_XSETREF(self->prefix, prefix);
    self->has_correlation = has_correlation;
    self->has_sender = has_sender;
    self->kinds = kinds;
    self->correlated = correlated;
    return 0;
}

static int encoder_traverse(Encoder *self, visitproc visit, void *arg) {
    Py_VISIT(self->slow);
    Py_VISIT(self->dumps);
    Py_VISIT(self->protocol);
    Py_VISIT(self->pickle_meta);
    Py_VISIT(self->prefix);
    return 0;
}

static int encoder_clear(Encoder *self) {
    Py_CLEAR(self->slow);
    Py_CLEAR(self->dumps);
    Py_CLEAR(self->protocol);
    Py_CLEAR(self->pickle_meta);
    Py_CLEAR(self->prefix);
    return 0;
}

static void encoder_dealloc(Encoder *self) {
    PyObject_GC_UnTrack(self);
    encoder_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mybus_actors._ringcore.Encoder",
    .tp_doc = "codec.encode's common call in C; anything else is the Python function.",
    .tp_basicsize = sizeof(Encoder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Encoder, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = encoder_new,
    .tp_init = (initproc)encoder_init,
    .tp_traverse = (traverseproc)encoder_traverse,
    .tp_clear = (inquiry)encoder_clear,
    .tp_dealloc = (destructor)encoder_dealloc,
};

/* -- the decode fast path -------------------------------------------------------------- */

/* FieldsDecoder(slow, loads, failed, kinds, pickle_tags, has_correlation, has_sender):
 * codec.decode_fields(meta, body) in C: (kind, sender, correlation id, message), with
 * `kinds[meta & 7]` as the kind (None: not a kind), the envelope read as encode wrote
 * it, the payload `bytes` (RAW) or `loads(view)` for a tag whose bit is in
 * `pickle_tags`. A record it cannot read cleanly (unknown bits, a short or non-ASCII
 * prefix) is `slow(meta, body)`, codec's Python function, which raises the
 * SerializationError that says why; an unpickling that raises is `failed(tag, view,
 * exc)`'s to turn into the right error (so a hostile payload runs once, not twice). */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *slow, *loads, *failed, *kinds;
    long pickle_tags, has_correlation, has_sender;
} FieldsDecoder;

static PyObject *fields_call(FieldsDecoder *self, PyObject *const *args, size_t nargsf,
                             PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL || nargs != 2 || !PyLong_CheckExact(args[0]))
        return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
    long meta = PyLong_AsLong(args[0]);
    if (meta == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
    }
    long tag = (meta >> 3) & 3;
    PyObject *kind = meta >= 0 && meta <= 0x7F ? PyTuple_GET_ITEM(self->kinds, meta & 7) : Py_None;
    if (kind == Py_None || (tag != 0 && !(self->pickle_tags & (1L << tag))))
        return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
    }
    const unsigned char *data = (const unsigned char *)view.buf;
    Py_ssize_t size = view.len, pos = 0;
    unsigned long long corr = 0;
    PyObject *sender = NULL, *message = NULL, *corr_obj = NULL, *out = NULL;
    if (meta & self->has_correlation) {
        if (size < 8)
            goto slow;
        for (int b = 7; b >= 0; b--)
            corr = (corr << 8) | data[b];
        pos = 8;
    }
    if (meta & self->has_sender) {
        if (pos >= size || pos + 1 + data[pos] > size)
            goto slow;
        Py_ssize_t n = data[pos];
        for (Py_ssize_t i = 0; i < n; i++)
            if (data[pos + 1 + i] & 0x80)
                goto slow;
        sender = PyUnicode_DecodeASCII((const char *)data + pos + 1, n, NULL);
        if (sender == NULL)
            goto done;
        pos += 1 + n;
    }
    if (tag == 0) {
        if (pos == 0 && PyBytes_CheckExact(args[1]))
            message = Py_NewRef(args[1]); /* as the Python function: no copy */
        else
            message = PyBytes_FromStringAndSize((const char *)data + pos, size - pos);
    } else {
        /* A small payload is copied (cheaper than a view and its release); a large
         * one is read in place, through a view released before we return. */
        int small = size - pos <= SMALL_PAYLOAD;
        PyObject *sub = small
            ? PyBytes_FromStringAndSize((const char *)data + pos, size - pos)
            : PyMemoryView_FromMemory((char *)data + pos, size - pos, PyBUF_READ);
        if (sub == NULL)
            goto done;
        message = PyObject_CallOneArg(self->loads, sub);
        if (message == NULL) {
#if PY_VERSION_HEX >= 0x030C0000
            PyObject *exc = PyErr_GetRaisedException();
#else
            PyObject *etype, *exc, *etb;
            PyErr_Fetch(&etype, &exc, &etb);
            PyErr_NormalizeException(&etype, &exc, &etb);
            if (etb != NULL)
                PyException_SetTraceback(exc, etb);
            Py_XDECREF(etype);
            Py_XDECREF(etb);
#endif
            PyObject *tag_obj = PyLong_FromLong(tag);
            if (tag_obj != NULL) {
                PyObject *a[3] = {tag_obj, sub, exc};
                PyObject *r = PyObject_Vectorcall(self->failed, a, 3, NULL);
                Py_XDECREF(r); /* it raises; a None would be a bug of codec's */
                if (r != NULL && !PyErr_Occurred())
                    PyErr_SetString(PyExc_SystemError, "decode failure not raised");
                Py_DECREF(tag_obj);
            }
            Py_DECREF(exc);
        }
        if (!small) {
            /* Our view of the buffer ends here: a reference kept to it (a traceback's
             * frame holds it) must not read the ring's memory later. The error raised
             * above, if any, stays as it was. */
            PyObject *et, *ev, *etb2;
            PyErr_Fetch(&et, &ev, &etb2);
            PyObject *r = PyObject_CallMethodNoArgs(sub, str_release);
            if (r == NULL)
                PyErr_Clear();
            Py_XDECREF(r);
            PyErr_Restore(et, ev, etb2);
        }
        Py_DECREF(sub);
    }
    if (message == NULL)
        goto done;
    corr_obj = PyLong_FromUnsignedLongLong(corr);
    if (corr_obj == NULL)
        goto done;
    out = PyTuple_Pack(4, kind, sender == NULL ? Py_None : sender, corr_obj, message);
    goto done;
slow:
    PyBuffer_Release(&view);
    return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
done:
    Py_XDECREF(sender);
    Py_XDECREF(message);
    Py_XDECREF(corr_obj);
    PyBuffer_Release(&view);
    return out;
}

static PyObject *fields_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    FieldsDecoder *self = (FieldsDecoder *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->vectorcall = (vectorcallfunc)fields_call;
    return (PyObject *)self;
}

static int fields_init(FieldsDecoder *self, PyObject *args, PyObject *kwds) {
    PyObject *slow, *loads, *failed, *kinds;
    long pickle_tags, has_correlation, has_sender;
    static char *kwlist[] = {"slow", "loads", "failed", "kinds", "pickle_tags",
                             "has_correlation", "has_sender", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO!lll:FieldsDecoder", kwlist, &slow,
                                     &loads, &failed, &PyTuple_Type, &kinds, &pickle_tags,
                                     &has_correlation, &has_sender))
        return -1;
    if (PyTuple_GET_SIZE(kinds) != 8) {
        PyErr_SetString(PyExc_ValueError, "kinds must have 8 entries, one per kind value");
        return -1;
    }
    Py_XSETREF(self->slow, Py_NewRef(slow));
    Py_XSETREF(self->loads, Py_NewRef(loads));
    Py_XSETREF(self->failed, Py_NewRef(failed));
    Py_XSETREF(self->kinds, Py_NewRef(kinds));
    self->pickle_tags = pickle_tags;
    self->has_correlation = has_correlation;
    self->has_sender = has_sender;
    return 0;
}

static int fields_traverse(FieldsDecoder *self, visitproc visit, void *arg) {
    Py_VISIT(self->slow);
    Py_VISIT(self->loads);
    Py_VISIT(self->failed);
    Py_VISIT(self->kinds);
    return 0;
}

static int fields_clear(FieldsDecoder *self) {
    Py_CLEAR(self->slow);
    Py_CLEAR(self->loads);
    Py_CLEAR(self->failed);
    Py_CLEAR(self->kinds);
    return 0;
}

static void fields_dealloc(FieldsDecoder *self) {
    PyObject_GC_UnTrack(self);
    fields_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject FieldsDecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mybus_actors._ringcore.FieldsDecoder",
    .tp_doc = "codec.decode_fields in C; a record it cannot read is the Python function's.",
    .tp_basicsize = sizeof(FieldsDecoder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(FieldsDecoder, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = fields_new,
    .tp_init = (initproc)fields_init,
    .tp_traverse = (traverseproc)fields_traverse,
    .tp_clear = (inquiry)fields_clear,
    .tp_dealloc = (destructor)fields_dealloc,
};

/* -- the tell fast path ----------------------------------------------------------------- */

/* Runtime.tell's common call, tell(sender, to, message), for an actor of another process
   on this node whose address was seen before: the route from the runtime's own cache,
   codec.encode, then the endpoint's send, with no Python frame between them. Anything
   else (an address not cached, another node, an actor of this process, keywords) is the
   Python method, which stays the reference. The dicts are the runtime's own objects, read
   at each call: what they say now is what the Python method would see. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *slow;   /* Runtime.tell */
    PyObject *routes; /* address -> (node, name) */
    PyObject *cells;  /* name -> cell, the actors of this process */
    PyObject *node;   /* this node's name */
    PyObject *encode; /* codec.encode */
    PyObject *send;   /* the endpoint's send */
    PyObject *forwards; /* address on another node -> its forward ring's name, or NULL */
    PyObject *prefix;   /* "node/": a sender's full address begins so */
    PyObject *not_found; /* errors.ActorNotFound */
} Teller;

/* The end of a plain tell: ``record`` (encode's result, a new reference or NULL with an
   exception set) sent from ``sender`` into the ring ``to`` by the endpoint's send. */
static PyObject *teller_send(Teller *self, PyObject *record, PyObject *sender, PyObject *to) {
    if (record == NULL)
        return NULL;
    if (!PyTuple_CheckExact(record) || PyTuple_GET_SIZE(record) != 2) {
        Py_DECREF(record);
        PyErr_SetString(PyExc_TypeError, "encode must return (meta, body)");
        return NULL;
    }
    PyObject *send_args[4] = {sender, to, PyTuple_GET_ITEM(record, 1),
                              PyTuple_GET_ITEM(record, 0)};
    PyObject *out = PyObject_Vectorcall(self->send, send_args, 4, NULL);
    Py_DECREF(record);
    return out;
}

/* A tell to another node whose forward ring is known: encode naming the sender in full,
   then the endpoint's send into that ring (the gateway's outbox). A missing gateway
   (ActorNotFound, nothing sent) is the Python method's to handle: it waits for a
   restarted one or says why, so the message is encoded again there. */
static PyObject *teller_remote(Teller *self, PyObject *const *args, size_t nargsf,
                               PyObject *ring) {
    PyObject *sender = args[0];
    Py_ssize_t slash = PyUnicode_FindChar(sender, '/', 0, PyUnicode_GET_LENGTH(sender), 1);
    if (slash == -2)
        return NULL;
    PyObject *origin = slash >= 0 ? Py_NewRef(sender) : PyUnicode_Concat(self->prefix, sender);
    if (origin == NULL)
        return NULL;
    Py_INCREF(ring); /* outlives a cache cleared by what we call */
    PyObject *enc_args[2] = {args[2], origin};
    PyObject *record = PyObject_Vectorcall(self->encode, enc_args, 1, kwnames_sender);
    Py_DECREF(origin);
    PyObject *out = teller_send(self, record, sender, ring);
    Py_DECREF(ring);
    if (out == NULL && PyErr_ExceptionMatches(self->not_found)) {
        PyErr_Clear();
        return PyObject_Vectorcall(self->slow, args, nargsf, NULL);
    }
    return out;
}

static PyObject *teller_call(Teller *self, PyObject *const *args, size_t nargsf,
                             PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 3 || kwnames != NULL || !PyUnicode_CheckExact(args[1]))
        return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
    PyObject *route = PyDict_GetItemWithError(self->routes, args[1]); /* borrowed */
    if (route == NULL) {
        if (PyErr_Occurred())
            return NULL;
        return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
    }
    if (!PyTuple_CheckExact(route) || PyTuple_GET_SIZE(route) != 2)
        return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
    PyObject *node = PyTuple_GET_ITEM(route, 0);
    PyObject *name = PyTuple_GET_ITEM(route, 1);
    int here = node == self->node ? 1 : PyObject_RichCompareBool(node, self->node, Py_EQ);
    if (here < 0)
        return NULL;
    if (!here) {
        PyObject *ring = self->forwards == NULL
                             ? NULL
                             : PyDict_GetItemWithError(self->forwards, args[1]); /* borrowed */
        if (ring == NULL && PyErr_Occurred())
            return NULL;
        if (ring == NULL || !PyUnicode_CheckExact(ring) || !PyUnicode_CheckExact(args[0]))
            return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
        return teller_remote(self, args, nargsf, ring);
    }
    int local = PyDict_Contains(self->cells, name);
    if (local < 0)
        return NULL;
    if (local)
        return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
    Py_INCREF(route); /* the route's items outlive a cache cleared by what we call */
    PyObject *out = teller_send(self, PyObject_CallOneArg(self->encode, args[2]), args[0], name);
    Py_DECREF(route);
    return out;
}

static PyObject *teller_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Teller *self = (Teller *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->vectorcall = (vectorcallfunc)teller_call;
    return (PyObject *)self;
}

static int teller_init(Teller *self, PyObject *args, PyObject *kwds) {
    PyObject *slow, *routes, *cells, *node, *encode, *send, *forwards = NULL;
    static char *kwlist[] = {"slow", "routes", "cells", "node", "encode", "send", "forwards",
                             NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!O!O!OO|$O!:Teller", kwlist, &slow,
                                     &PyDict_Type, &routes, &PyDict_Type, &cells,
                                     &PyUnicode_Type, &node, &encode, &send, &PyDict_Type,
                                     &forwards))
        return -1;
    PyObject *prefix = PyUnicode_FromFormat("%U/", node);
    if (prefix == NULL)
        return -1;
    Py_XSETREF(self->prefix, prefix);
    Py_XSETREF(self->forwards, Py_XNewRef(forwards));
    Py_XSETREF(self->not_found, Py_NewRef(ActorNotFound));
    Py_XSETREF(self->slow, Py_NewRef(slow));
    Py_XSETREF(self->routes, Py_NewRef(routes));
    Py_XSETREF(self->cells, Py_NewRef(cells));
    Py_XSETREF(self->node, Py_NewRef(node));
    Py_XSETREF(self->encode, Py_NewRef(encode));
    Py_XSETREF(self->send, Py_NewRef(send));
    return 0;
}

static int teller_traverse(Teller *self, visitproc visit, void *arg) {
    Py_VISIT(self->slow);
    Py_VISIT(self->routes);
    Py_VISIT(self->cells);
    Py_VISIT(self->node);
    Py_VISIT(self->encode);
    Py_VISIT(self->send);
    Py_VISIT(self->forwards);
    Py_VISIT(self->prefix);
    Py_VISIT(self->not_found);
    return 0;
}

static int teller_clear(Teller *self) {
    Py_CLEAR(self->slow);
    Py_CLEAR(self->routes);
    Py_CLEAR(self->cells);
    Py_CLEAR(self->node);
    Py_CLEAR(self->encode);
    Py_CLEAR(self->send);
    Py_CLEAR(self->forwards);
    Py_CLEAR(self->prefix);
    Py_CLEAR(self->not_found);
    return 0;
}

static void teller_dealloc(Teller *self) {
    PyObject_GC_UnTrack(self);
    teller_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject TellerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mybus_actors._ringcore.Teller",
    .tp_doc = "Runtime.tell's common call in C; anything else is the Python method.",
    .tp_basicsize = sizeof(Teller),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Teller, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = teller_new,
    .tp_init = (initproc)teller_init,
    .tp_traverse = (traverseproc)teller_traverse,
    .tp_clear = (inquiry)teller_clear,
    .tp_dealloc = (destructor)teller_dealloc,
};

static PyMethodDef module_methods[] = {
    {"scan_packed", (PyCFunction)(void (*)(void))scan_packed, METH_FASTCALL,
     "Check records packed as a run carries them; the offset after them."},
    {"unpack_packed", (PyCFunction)(void (*)(void))unpack_packed, METH_FASTCALL,
     "The (end, header, payload) records packed at an offset."},
    {"strip_run", (PyCFunction)(void (*)(void))strip_run, METH_FASTCALL,
     "Append the records that go on a relayed run, stripped: (index, last)."},
    {NULL, NULL, 0, NULL},
};

/* -- the module ------------------------------------------------------------------------ */

static struct PyModuleDef ringcore_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "mybus_actors._ringcore",
    .m_doc = "ring.py's Producer, Consumer and Reader in C (layout version 3).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__ringcore(void) {
    PyObject *errors = PyImport_ImportModule("mybus_actors.errors");
    if (errors == NULL)
        return NULL;
    RingCorrupted = PyObject_GetAttrString(errors, "RingCorrupted");
    RemoteProtocolError = PyObject_GetAttrString(errors, "RemoteProtocolError");
    ActorNotFound = PyObject_GetAttrString(errors, "ActorNotFound");
    Py_DECREF(errors);
    if (RingCorrupted == NULL || RemoteProtocolError == NULL || ActorNotFound == NULL)
        return NULL;
    PyObject *ring = PyImport_ImportModule("mybus_actors.ring");
    if (ring == NULL)
        return NULL;
    RingStats = PyObject_GetAttrString(ring, "RingStats");
    Py_DECREF(ring);
    if (RingStats == NULL)
        return NULL;
    if (PyType_Ready(&ProducerType) < 0 || PyType_Ready(&ConsumerType) < 0 ||
        PyType_Ready(&ReaderType) < 0 || PyType_Ready(&SenderType) < 0 ||
        PyType_Ready(&EncoderType) < 0 || PyType_Ready(&FieldsDecoderType) < 0 ||
        PyType_Ready(&TellerType) < 0)
        return NULL;
    kw_kind = PyUnicode_InternFromString("kind");
    kw_sender = PyUnicode_InternFromString("sender");
    kw_correlation_id = PyUnicode_InternFromString("correlation_id");
    str_release = PyUnicode_InternFromString("release");
    kwnames_sender = kw_sender == NULL ? NULL : PyTuple_Pack(1, kw_sender);
    if (kw_kind == NULL || kw_sender == NULL || kw_correlation_id == NULL || str_release == NULL ||
        kwnames_sender == NULL)
        return NULL;
    zero = PyLong_FromLong(0);
    if (zero == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&ringcore_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "VERSION", VERSION) < 0 ||
        PyModule_AddObjectRef(m, "Producer", (PyObject *)&ProducerType) < 0 ||
        PyModule_AddObjectRef(m, "Consumer", (PyObject *)&ConsumerType) < 0 ||
        PyModule_AddObjectRef(m, "Reader", (PyObject *)&ReaderType) < 0 ||
        PyModule_AddObjectRef(m, "Sender", (PyObject *)&SenderType) < 0 ||
        PyModule_AddObjectRef(m, "Encoder", (PyObject *)&EncoderType) < 0 ||
        PyModule_AddObjectRef(m, "FieldsDecoder", (PyObject *)&FieldsDecoderType) < 0 ||
        PyModule_AddObjectRef(m, "Teller", (PyObject *)&TellerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
