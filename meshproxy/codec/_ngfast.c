/* Native helpers of the hot paths: the nghttp2 codec's per-field and per-chunk
 * work, the HTTP/2 header-list checks, header hygiene, the HTTP/1.1 express
 * lane's head loops, and the request metrics' per-request recording.
 *
 * Where this sits: an optional CPython extension used by _ng_wire.py and
 * _ng_codec.py (the nghttp2 codec), _h2_headers.py (lift_request, lift_response,
 * _clean), http/headers.py (clean_request, clean_response, new_request_id),
 * http/express_heads.py (plain_request, plain_response) and observe/requests.py
 * (Series) when it was built.
 * setup.py builds it when a C compiler is present; without it, or with
 * MESHPROXY_NGFAST=0, each of them runs its Python code, which stays the
 * reference the tests compare these functions with.
 * It does not link against libnghttp2 and needs no nghttp2 headers: _ng_wire
 * hands it the addresses of the few libnghttp2 functions it calls (``bind``),
 * which cffi has already loaded, and registers the callbacks below (``callbacks``)
 * in the session callback tables. The structures it reads are nghttp2's
 * ABI, stable since nghttp2 1.0.
 *
 * What it replaces, per request, on the cffi path:
 * - one Python callback per received header field (``on_header``) and per DATA
 *   chunk (``on_data_chunk_recv``): here they append (name, value) tuples and
 *   chunk bytes to a ``Collector`` the codec owns;
 * - cffi's callback machinery (libffi argument classification, a cdata per
 *   pointer) for ``on_frame_recv`` and ``on_stream_close``: here they read the
 *   frame's fields at the offsets ``bind`` was given and call the collector's
 *   ``on_frame``/``on_close`` Python callables directly (vectorcall), and the
 *   data provider's read callback calls ``on_read`` and copies what it returns;
 * - the GIL being released and taken again around every libnghttp2 call and
 *   every Python callback inside it: ``recv`` and ``send`` call
 *   ``mem_recv``/``mem_send`` holding the GIL, so the codec's remaining Python
 *   callbacks (frames, stream close, the data provider) enter directly;
 * - building ``nghttp2_nv`` arrays in Python: ``submit_*`` read a list of
 *   (name, value) ``bytes`` tuples directly.
 *
 * Invariants:
 * 1. The callbacks only run inside ``recv`` and ``send`` (the thread's current
 *    collector is set for exactly those calls); anywhere else they fail the
 *    session (NGHTTP2_ERR_CALLBACK_FAILURE) instead of touching memory.
 * 2. They never leave a Python exception set inside libnghttp2: a failure is
 *    recorded in the collector (``failed``, or the exception in ``error``) and
 *    reported as a callback failure.
 * 3. ``recv``/``send`` re-raise an exception a Python callback left set.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#define ERR_CALLBACK_FAILURE (-902)
#define T_DATA 0
#define T_HEADERS 1
#define T_RST_STREAM 3
#define T_SETTINGS 4
#define T_PING 6
#define T_GOAWAY 7
#define NV_FLAG_NO_INDEX 0x01
#define STACK_NV 64

typedef struct {
    const uint8_t *name;
    const uint8_t *value;
    size_t namelen;
    size_t valuelen;
    uint8_t flags;
} nv_t; /* nghttp2_nv */

typedef Py_ssize_t (*mem_recv_fn)(void *session, const uint8_t *in, size_t inlen);
typedef Py_ssize_t (*mem_send_fn)(void *session, const uint8_t **data_ptr);
typedef int32_t (*submit_request_fn)(void *session, const void *pri_spec, const nv_t *nva, size_t nvlen,
                                     const void *data_prd, void *stream_user_data);
typedef int (*submit_response_fn)(void *session, int32_t stream_id, const nv_t *nva, size_t nvlen,
                                  const void *data_prd);
typedef int32_t (*submit_headers_fn)(void *session, uint8_t flags, int32_t stream_id, const void *pri_spec,
                                     const nv_t *nva, size_t nvlen, void *stream_user_data);

static mem_recv_fn f_mem_recv;
static mem_send_fn f_mem_send;
static submit_request_fn f_submit_request;
static submit_response_fn f_submit_response;
static submit_headers_fn f_submit_headers;
static const void *f_provider; /* the nghttp2_data_provider of requests with a body */
typedef int32_t (*stream_window_fn)(void *session, int32_t stream_id);
typedef int32_t (*session_window_fn)(void *session);
typedef int (*consume_fn)(void *session, int32_t stream_id, size_t size);
typedef int (*want_read_fn)(void *session);
typedef int (*submit_data_fn)(void *session, uint8_t flags, int32_t stream_id, const void *data_prd);
typedef int (*resume_data_fn)(void *session, int32_t stream_id);
static stream_window_fn f_stream_window;   /* nghttp2_session_get_stream_remote_window_size */
static session_window_fn f_session_window; /* nghttp2_session_get_remote_window_size */
static consume_fn f_consume;               /* nghttp2_session_consume */
static want_read_fn f_want_read;           /* nghttp2_session_want_read */
static submit_data_fn f_submit_data;       /* nghttp2_submit_data */
static resume_data_fn f_resume_data;       /* nghttp2_session_resume_data */

/* Offsets into nghttp2_frame, from cffi's view of the declared layout (``bind``). */
static struct {
    Py_ssize_t sid, type, flags, rst_code, cat, ga_last, ga_code, ga_data, ga_len;
} L;

/* === Collector ========================================================= */

typedef struct {
    PyObject_HEAD
    PyObject *fields;      /* list of (name, value) of the header block being received */
    PyObject *chunks;      /* list of DATA chunk bytes of the frame being received */
    Py_ssize_t fsize;      /* RFC 7541 size of ``fields`` (name + value + 32 each) */
    Py_ssize_t hard_limit; /* above this the block is refused (``over``) */
    int over;
    int failed;
    PyObject *on_frame;    /* on_frame(type, sid, flags, length, code, cat_or_last, debug) -> int */
    PyObject *on_close;    /* on_close(sid, error_code) -> int */
    PyObject *on_read;     /* on_read(sid, length) -> int, or (bytes-like, data flags) */
    PyObject *on_headers;  /* on_headers(sid, flags, cat, fields, fsize) -> int, or NULL: on_frame */
    PyObject *on_data;     /* on_data(sid, flags, length, data) -> int, or NULL: on_frame */
    PyObject *error;       /* the exception a Python callback raised, or NULL */
    PyObject *streams;     /* the codec's dict of streams it still tracks, or NULL: on_close is
                              called only for those (a stream the codec forgot needs no call) */
    PyObject *bodies;      /* dict sid -> bytes: whole response bodies the read callback sends
                              itself, without on_read (``NgHttp2Codec.send_response``) */
} Collector;

static _Thread_local Collector *current;

static int
Collector_init(Collector *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"hard_limit", "on_frame", "on_close", "on_read", "on_headers", "on_data", NULL};
    Py_ssize_t hard_limit;
    PyObject *on_frame = NULL, *on_close = NULL, *on_read = NULL, *on_headers = NULL, *on_data = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n|OOOOO", kwlist, &hard_limit, &on_frame, &on_close, &on_read,
                                     &on_headers, &on_data))
        return -1;
    PyObject *given[5] = {on_frame, on_close, on_read, on_headers, on_data};
    for (int i = 0; i < 5; i++)
        if (given[i] != NULL && given[i] != Py_None && !PyCallable_Check(given[i])) {
            PyErr_SetString(PyExc_TypeError, "on_frame, on_close, on_read, on_headers and on_data must be callable");
            return -1;
        }
    PyObject *fields = PyList_New(0), *chunks = PyList_New(0), *bodies = PyDict_New();
    if (fields == NULL || chunks == NULL || bodies == NULL) {
        Py_XDECREF(fields);
        Py_XDECREF(chunks);
        Py_XDECREF(bodies);
        return -1;
    }
    Py_XSETREF(self->bodies, bodies);
    Py_CLEAR(self->streams);
    Py_XSETREF(self->fields, fields);
    Py_XSETREF(self->chunks, chunks);
    self->fsize = 0;
    self->hard_limit = hard_limit;
    self->over = 0;
    self->failed = 0;
    Py_XSETREF(self->on_frame, on_frame == Py_None ? NULL : Py_XNewRef(on_frame));
    Py_XSETREF(self->on_close, on_close == Py_None ? NULL : Py_XNewRef(on_close));
    Py_XSETREF(self->on_read, on_read == Py_None ? NULL : Py_XNewRef(on_read));
    Py_XSETREF(self->on_headers, on_headers == Py_None ? NULL : Py_XNewRef(on_headers));
    Py_XSETREF(self->on_data, on_data == Py_None ? NULL : Py_XNewRef(on_data));
    Py_CLEAR(self->error);
    return 0;
}

/* The collector usually holds its codec's bound methods, and the codec holds the
   collector: a cycle the garbage collector must be able to break. */
static int
Collector_traverse(Collector *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fields);
    Py_VISIT(self->chunks);
    Py_VISIT(self->on_frame);
    Py_VISIT(self->on_close);
    Py_VISIT(self->on_read);
    Py_VISIT(self->on_headers);
    Py_VISIT(self->on_data);
    Py_VISIT(self->error);
    Py_VISIT(self->streams);
    Py_VISIT(self->bodies);
    return 0;
}

static int
Collector_clear(Collector *self)
{
    Py_CLEAR(self->fields);
    Py_CLEAR(self->chunks);
    Py_CLEAR(self->on_frame);
    Py_CLEAR(self->on_close);
    Py_CLEAR(self->on_read);
    Py_CLEAR(self->on_headers);
    Py_CLEAR(self->on_data);
    Py_CLEAR(self->error);
    Py_CLEAR(self->streams);
    Py_CLEAR(self->bodies);
    return 0;
}

static void
Collector_dealloc(Collector *self)
{
    PyObject_GC_UnTrack(self);
    Collector_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The header block received so far (a new reference; its RFC 7541 size in ``*fsize``); starts a
   new one. NULL when out of memory. */
static PyObject *
take_fields(Collector *self, Py_ssize_t *fsize)
{
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL)
        return NULL;
    PyObject *fields = self->fields;
    self->fields = fresh;
    *fsize = self->fsize;
    self->fsize = 0;
    return fields;
}

/* take() -> (fields, fsize): the header block received so far; starts a new one. */
static PyObject *
Collector_take(Collector *self, PyObject *Py_UNUSED(ignored))
{
    if (self->fields == NULL) {
        PyErr_SetString(PyExc_ValueError, "Collector not initialised");
        return NULL;
    }
    Py_ssize_t fsize;
    PyObject *fields = take_fields(self, &fsize);
    return fields == NULL ? NULL : Py_BuildValue("(Nn)", fields, fsize);
}

/* data() -> bytes: the DATA frame's chunks joined (b"" when none); starts a new frame. */
static PyObject *
Collector_data(Collector *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *chunks = self->chunks;
    if (chunks == NULL) {
        PyErr_SetString(PyExc_ValueError, "Collector not initialised");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(chunks);
    PyObject *out;
    if (n == 0)
        return PyBytes_FromStringAndSize(NULL, 0);
    if (n == 1) {
        out = PyList_GET_ITEM(chunks, 0);
        Py_INCREF(out);
    } else {
        PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
        if (empty == NULL)
            return NULL;
        out = _PyBytes_Join(empty, chunks);
        Py_DECREF(empty);
        if (out == NULL)
            return NULL;
    }
    if (PyList_SetSlice(chunks, 0, n, NULL) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyMethodDef Collector_methods[] = {
    {"take", (PyCFunction)Collector_take, METH_NOARGS,
     "take() -> (fields, size): the header fields collected and their RFC 7541 size; resets both."},
    {"data", (PyCFunction)Collector_data, METH_NOARGS,
     "data() -> bytes: the DATA chunks collected, joined; resets them."},
    {NULL}};

static PyMemberDef Collector_members[] = {
    {"fields", T_OBJECT_EX, offsetof(Collector, fields), READONLY, "header fields collected so far"},
    {"fsize", T_PYSSIZET, offsetof(Collector, fsize), READONLY, "their RFC 7541 size"},
    {"hard_limit", T_PYSSIZET, offsetof(Collector, hard_limit), READONLY, "the size that fails a block"},
    {"over", T_INT, offsetof(Collector, over), 0, "1 once a header block went over hard_limit"},
    {"failed", T_INT, offsetof(Collector, failed), 0, "1 once collecting failed (out of memory)"},
    {"error", T_OBJECT, offsetof(Collector, error), 0,
     "the exception on_frame or on_close raised (None when none); the caller clears it"},
    {"streams", T_OBJECT, offsetof(Collector, streams), 0,
     "the codec's dict of the streams it tracks (or None): on_close is called only for those"},
    {"bodies", T_OBJECT_EX, offsetof(Collector, bodies), READONLY,
     "dict stream id -> bytes: bodies the data provider sends without calling on_read"},
    {NULL}};

static PyTypeObject CollectorType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "meshproxy.codec._ngfast.Collector",
    .tp_doc = PyDoc_STR("Collector(hard_limit, on_frame=None, on_close=None, on_read=None, on_headers=None, "
                        "on_data=None): the header fields and DATA chunks nghttp2 hands one session during "
                        "recv(), and the Python callables its frame-received, stream-closed and "
                        "data-provider read callbacks call."),
    .tp_basicsize = sizeof(Collector),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)Collector_traverse,
    .tp_clear = (inquiry)Collector_clear,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Collector_init,
    .tp_dealloc = (destructor)Collector_dealloc,
    .tp_methods = Collector_methods,
    .tp_members = Collector_members,
};

/* === callbacks nghttp2 calls (inside recv and send, with the GIL held) = */

static int
cb_on_header(void *session, const void *frame, const uint8_t *name, size_t namelen, const uint8_t *value,
             size_t valuelen, uint8_t flags, void *user_data)
{
    Collector *c = current;
    if (c == NULL || c->fields == NULL)
        return ERR_CALLBACK_FAILURE;
    c->fsize += (Py_ssize_t)(namelen + valuelen + 32);
    if (c->fsize > c->hard_limit) {
        c->over = 1;
        return ERR_CALLBACK_FAILURE;
    }
    PyObject *n = PyBytes_FromStringAndSize((const char *)name, (Py_ssize_t)namelen);
    PyObject *v = PyBytes_FromStringAndSize((const char *)value, (Py_ssize_t)valuelen);
    PyObject *t = PyTuple_New(2);
    if (n == NULL || v == NULL || t == NULL) {
        Py_XDECREF(n);
        Py_XDECREF(v);
        Py_XDECREF(t);
        goto fail;
    }
    PyTuple_SET_ITEM(t, 0, n);
    PyTuple_SET_ITEM(t, 1, v);
    int rv = PyList_Append(c->fields, t);
    Py_DECREF(t);
    if (rv < 0)
        goto fail;
    return 0;
fail:
    PyErr_Clear();
    c->failed = 1;
    return ERR_CALLBACK_FAILURE;
}

static int
cb_on_begin_headers(void *session, const void *frame, void *user_data)
{
    Collector *c = current;
    if (c == NULL || c->fields == NULL)
        return ERR_CALLBACK_FAILURE;
    Py_ssize_t n = PyList_GET_SIZE(c->fields);
    if (n && PyList_SetSlice(c->fields, 0, n, NULL) < 0) {
        PyErr_Clear();
        c->failed = 1;
        return ERR_CALLBACK_FAILURE;
    }
    c->fsize = 0;
    return 0;
}

static int
cb_on_data_chunk_recv(void *session, uint8_t flags, int32_t stream_id, const uint8_t *data, size_t len,
                      void *user_data)
{
    Collector *c = current;
    if (c == NULL || c->chunks == NULL)
        return ERR_CALLBACK_FAILURE;
    PyObject *b = PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)len);
    if (b == NULL || PyList_Append(c->chunks, b) < 0) {
        Py_XDECREF(b);
        PyErr_Clear();
        c->failed = 1;
        return ERR_CALLBACK_FAILURE;
    }
    Py_DECREF(b);
    return 0;
}

static int keep_error(Collector *c);

/* Call ``fn(*args)`` (a Python callable returning an int) for a callback: its int, or a
   callback failure with the exception kept in ``c->error``. Steals the references in args. */
static int
call_back(Collector *c, PyObject *fn, PyObject **args, Py_ssize_t n)
{
    PyObject *res = NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        if (args[i] == NULL)
            goto done;
    res = PyObject_Vectorcall(fn, args, (size_t)n, NULL);
done:
    for (Py_ssize_t i = 0; i < n; i++)
        Py_XDECREF(args[i]);
    if (res == NULL)
        goto fail;
    long rv = res == Py_None ? 0 : PyLong_AsLong(res);
    Py_DECREF(res);
    if (rv == -1 && PyErr_Occurred())
        goto fail;
    return (int)rv;
fail:
    return keep_error(c);
}

/* The Python exception now set, kept in ``c->error`` (the first one wins); a callback failure. */
static int
keep_error(Collector *c)
{
    if (c->error == NULL) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (value != NULL && tb != NULL)
            PyException_SetTraceback(value, tb);
        Py_XDECREF(type);
        Py_XDECREF(tb);
        c->error = value; /* the reference moves here (NULL if there was none) */
    }
    PyErr_Clear();
    return ERR_CALLBACK_FAILURE;
}

#define AT(p, off, type) (*(const type *)((const char *)(p) + (off)))

/* on_frame_recv: the frames the codec acts on go to ``on_frame``, HEADERS and DATA to
   ``on_headers`` and ``on_data`` with what was collected for them when the codec gave those;
   the rest (PRIORITY, WINDOW_UPDATE, unknown types), which it ignores, never reach Python. */
static int
cb_on_frame_recv(void *session, const void *frame, void *user_data)
{
    Collector *c = current;
    if (c == NULL || c->on_frame == NULL)
        return ERR_CALLBACK_FAILURE;
    uint8_t type = AT(frame, L.type, uint8_t);
    if (type == T_HEADERS && c->on_headers != NULL) {
        Py_ssize_t fsize;
        PyObject *fields = take_fields(c, &fsize);
        if (fields == NULL)
            return keep_error(c);
        PyObject *args[5] = {
            PyLong_FromLong(AT(frame, L.sid, int32_t)),
            PyLong_FromLong(AT(frame, L.flags, uint8_t)),
            PyLong_FromLong(AT(frame, L.cat, int)),
            fields,
            PyLong_FromSsize_t(fsize),
        };
        return call_back(c, c->on_headers, args, 5);
    }
    if (type == T_DATA && c->on_data != NULL) {
        PyObject *data = Collector_data(c, NULL);
        if (data == NULL)
            return keep_error(c);
        PyObject *args[4] = {
            PyLong_FromLong(AT(frame, L.sid, int32_t)),
            PyLong_FromLong(AT(frame, L.flags, uint8_t)),
            PyLong_FromSize_t(AT(frame, 0, size_t)),
            data,
        };
        return call_back(c, c->on_data, args, 4);
    }
    long code = 0, extra = 0;
    PyObject *debug;
    switch (type) {
    case T_DATA:
    case T_SETTINGS:
    case T_PING:
        break;
    case T_HEADERS:
        extra = AT(frame, L.cat, int);
        break;
    case T_RST_STREAM:
        code = (long)AT(frame, L.rst_code, uint32_t);
        break;
    case T_GOAWAY:
        code = (long)AT(frame, L.ga_code, uint32_t);
        extra = AT(frame, L.ga_last, int32_t);
        break;
    default:
        return 0;
    }
    if (type == T_GOAWAY && AT(frame, L.ga_len, size_t) > 0)
        debug = PyBytes_FromStringAndSize(AT(frame, L.ga_data, const char *),
                                          (Py_ssize_t)AT(frame, L.ga_len, size_t));
    else
        debug = PyBytes_FromStringAndSize(NULL, 0);
    PyObject *args[7] = {
        PyLong_FromLong(type),
        PyLong_FromLong(AT(frame, L.sid, int32_t)),
        PyLong_FromLong(AT(frame, L.flags, uint8_t)),
        PyLong_FromSize_t(AT(frame, 0, size_t)),
        PyLong_FromLong(code),
        PyLong_FromLong(extra),
        debug,
    };
    return call_back(c, c->on_frame, args, 7);
}

static int
cb_on_stream_close(void *session, int32_t stream_id, uint32_t error_code, void *user_data)
{
    Collector *c = current;
    if (c == NULL || c->on_close == NULL)
        return ERR_CALLBACK_FAILURE;
    PyObject *sid = PyLong_FromLong(stream_id);
    if (sid == NULL)
        return keep_error(c);
    if (c->bodies != NULL && PyDict_GET_SIZE(c->bodies) && PyDict_DelItem(c->bodies, sid) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError)) {
            Py_DECREF(sid);
            return keep_error(c);
        }
        PyErr_Clear(); /* sent whole already, or never had one */
    }
    if (c->streams != NULL && PyDict_CheckExact(c->streams)) {
        int tracked = PyDict_Contains(c->streams, sid);
        if (tracked <= 0) {
            Py_DECREF(sid);
            return tracked < 0 ? keep_error(c) : 0; /* forgotten by the codec: nothing to tell it */
        }
    }
    PyObject *args[2] = {sid, PyLong_FromUnsignedLong(error_code)};
    return call_back(c, c->on_close, args, 2);
}

/* The data provider's read callback: ``on_read(sid, length)`` gives the bytes for one DATA
   frame and its flags (NGHTTP2_DATA_FLAG_*), or an int (NGHTTP2_ERR_DEFERRED, ...). */
static Py_ssize_t
cb_on_read(void *session, int32_t stream_id, uint8_t *buf, size_t length, uint32_t *data_flags,
           void *source, void *user_data)
{
    Collector *c = current;
    if (c == NULL || c->on_read == NULL)
        return ERR_CALLBACK_FAILURE;
    if (c->bodies != NULL && PyDict_GET_SIZE(c->bodies)) { /* a whole body handed over: sent from here */
        PyObject *sid = PyLong_FromLong(stream_id);
        if (sid == NULL)
            return keep_error(c);
        PyObject *body = PyDict_GetItemWithError(c->bodies, sid); /* borrowed */
        if (body == NULL && PyErr_Occurred()) {
            Py_DECREF(sid);
            return keep_error(c);
        }
        if (body != NULL && PyBytes_CheckExact(body)) {
            Py_ssize_t n = PyBytes_GET_SIZE(body);
            int rc;
            if ((size_t)n <= length) {
                if (n)
                    memcpy(buf, PyBytes_AS_STRING(body), (size_t)n);
                *data_flags |= 1; /* NGHTTP2_DATA_FLAG_EOF */
                rc = PyDict_DelItem(c->bodies, sid);
            } else {
                memcpy(buf, PyBytes_AS_STRING(body), length);
                PyObject *rest = PyBytes_FromStringAndSize(PyBytes_AS_STRING(body) + length, n - (Py_ssize_t)length);
                rc = rest == NULL ? -1 : PyDict_SetItem(c->bodies, sid, rest);
                Py_XDECREF(rest);
                n = (Py_ssize_t)length;
            }
            Py_DECREF(sid);
            return rc < 0 ? keep_error(c) : n;
        }
        Py_DECREF(sid);
    }
    PyObject *args[2] = {PyLong_FromLong(stream_id), PyLong_FromSize_t(length)};
    PyObject *res = NULL;
    if (args[0] != NULL && args[1] != NULL)
        res = PyObject_Vectorcall(c->on_read, args, 2, NULL);
    Py_XDECREF(args[0]);
    Py_XDECREF(args[1]);
    if (res == NULL)
        return keep_error(c);
    if (PyLong_CheckExact(res)) {
        long rv = PyLong_AsLong(res);
        Py_DECREF(res);
        return rv == -1 && PyErr_Occurred() ? keep_error(c) : (Py_ssize_t)rv;
    }
    Py_buffer view;
    long flags;
    if (!PyTuple_CheckExact(res) || PyTuple_GET_SIZE(res) != 2) {
        PyErr_SetString(PyExc_TypeError, "on_read must return an int or (data, flags)");
        goto fail;
    }
    flags = PyLong_AsLong(PyTuple_GET_ITEM(res, 1));
    if (flags == -1 && PyErr_Occurred())
        goto fail;
    if (PyObject_GetBuffer(PyTuple_GET_ITEM(res, 0), &view, PyBUF_SIMPLE) < 0)
        goto fail;
    if ((size_t)view.len > length) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "on_read returned more than it was asked for");
        goto fail;
    }
    Py_ssize_t n = view.len;
    if (n)
        memcpy(buf, view.buf, (size_t)n);
    PyBuffer_Release(&view);
    Py_DECREF(res);
    *data_flags |= (uint32_t)flags;
    return n;
fail:
    Py_DECREF(res);
    return keep_error(c);
}

/* === calls into libnghttp2 ============================================= */

static int
not_bound(void)
{
    if (f_mem_recv == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_ngfast.bind() has not been called");
        return 1;
    }
    return 0;
}

static void *
session_of(PyObject *addr)
{
    void *s = PyLong_AsVoidPtr(addr);
    if (s == NULL && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "no nghttp2 session (freed)");
    return s;
}

/* The session (args[0]) of a call that takes ``want`` arguments, the last a Collector; NULL
   with an exception set (``usage`` for a TypeError) when it cannot be had. */
static void *
session_with_collector(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, const char *usage)
{
    if (nargs != want || !PyObject_TypeCheck(args[want - 1], &CollectorType)) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    return not_bound() ? NULL : session_of(args[0]);
}

/* recv(session, data, collector) -> int: nghttp2_session_mem_recv, collecting into ``collector``. */
static PyObject *
fast_recv(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    void *s = session_with_collector(args, nargs, 3, "recv(session, data, collector)");
    if (s == NULL)
        return NULL;
    Py_buffer buf;
    if (PyObject_GetBuffer(args[1], &buf, PyBUF_SIMPLE) < 0)
        return NULL;
    Collector *prev = current;
    current = (Collector *)args[2];
    Py_INCREF(args[2]);
    Py_ssize_t rv = f_mem_recv(s, (const uint8_t *)buf.buf, (size_t)buf.len);
    current = prev;
    Py_DECREF(args[2]);
    PyBuffer_Release(&buf);
    if (PyErr_Occurred())
        return NULL;
    return PyLong_FromSsize_t(rv);
}

/* send(session, collector) -> (bytes, rv): everything nghttp2_session_mem_send gives now, joined;
   rv is 0 or the negative error that stopped it. */
static PyObject *
fast_send(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    void *s = session_with_collector(args, nargs, 2, "send(session, collector)");
    if (s == NULL)
        return NULL;
    PyObject *out = NULL; /* bytes, grown as needed */
    Py_ssize_t used = 0, rv;
    Collector *prev = current;
    PyObject *col = args[1];
    Py_INCREF(col);
    current = (Collector *)col;
    for (;;) {
        const uint8_t *p = NULL;
        rv = f_mem_send(s, &p);
        if (PyErr_Occurred()) {
            current = prev;
            Py_DECREF(col);
            Py_XDECREF(out);
            return NULL;
        }
        if (rv <= 0)
            break;
        if (out == NULL) {
            out = PyBytes_FromStringAndSize((const char *)p, rv);
            if (out == NULL)
                break;
            used = rv;
            continue;
        }
        Py_ssize_t have = PyBytes_GET_SIZE(out);
        if (used + rv > have) {
            Py_ssize_t want = have * 2 > used + rv ? have * 2 : used + rv;
            if (_PyBytes_Resize(&out, want) < 0)
                break; /* out is NULL now */
        }
        memcpy(PyBytes_AS_STRING(out) + used, p, (size_t)rv);
        used += rv;
    }
    current = prev;
    Py_DECREF(col);
    if (PyErr_Occurred()) {
        Py_XDECREF(out);
        return NULL;
    }
    if (out == NULL) {
        out = PyBytes_FromStringAndSize(NULL, 0);
        if (out == NULL)
            return NULL;
    } else if (used != PyBytes_GET_SIZE(out) && _PyBytes_Resize(&out, used) < 0) {
        return NULL;
    }
    return Py_BuildValue("(Nn)", out, rv < 0 ? rv : (Py_ssize_t)0);
}

/* Fill ``nv`` (``cap`` entries) from a list of (name, value) bytes tuples; a tuple subclass
   (hpack's NeverIndexedHeaderTuple) is sent never-indexed. Returns the count, or -1 with
   TypeError when a field is not a 2-tuple of bytes (the caller packs it in Python), or -2
   when there are more than ``cap``. */
static Py_ssize_t
pack(PyObject *fields, nv_t *nv, Py_ssize_t cap)
{
    if (!PyList_CheckExact(fields)) {
        PyErr_SetString(PyExc_TypeError, "fields must be a list");
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(fields);
    if (n > cap)
        return -2;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PyList_GET_ITEM(fields, i);
        if (!PyTuple_Check(f) || PyTuple_GET_SIZE(f) != 2) {
            PyErr_SetString(PyExc_TypeError, "a field is not a (name, value) tuple");
            return -1;
        }
        PyObject *name = PyTuple_GET_ITEM(f, 0), *value = PyTuple_GET_ITEM(f, 1);
        if (!PyBytes_CheckExact(name) || !PyBytes_CheckExact(value)) {
            PyErr_SetString(PyExc_TypeError, "a field is not made of bytes");
            return -1;
        }
        nv[i].name = (const uint8_t *)PyBytes_AS_STRING(name);
        nv[i].value = (const uint8_t *)PyBytes_AS_STRING(value);
        nv[i].namelen = (size_t)PyBytes_GET_SIZE(name);
        nv[i].valuelen = (size_t)PyBytes_GET_SIZE(value);
        nv[i].flags = PyTuple_CheckExact(f) ? 0 : NV_FLAG_NO_INDEX;
    }
    return n;
}

/* Submit a head: nghttp2_submit_request (``kind`` SUBMIT_REQUEST; with our data provider when
   ``body``), nghttp2_submit_response (a final response: it ends the stream, or with ``body`` our
   data provider sends the body queued for it) or nghttp2_submit_headers (a response head whose
   body follows later, or a 1xx). The fields are packed into a stack array, or a heap one for a
   long list. Returns nghttp2's result (a new stream id for a request). */
enum { SUBMIT_REQUEST, SUBMIT_RESPONSE, SUBMIT_HEADERS };

static PyObject *
submit(int kind, PyObject *session, int32_t stream_id, PyObject *fields, int body)
{
    if (not_bound())
        return NULL;
    void *s = session_of(session);
    if (s == NULL)
        return NULL;
    nv_t stack_nv[STACK_NV], *nv = stack_nv, *heap = NULL;
    Py_ssize_t n = pack(fields, stack_nv, STACK_NV);
    if (n == -2) {
        Py_ssize_t want = PyList_GET_SIZE(fields);
        if ((heap = PyMem_Malloc(sizeof(nv_t) * (size_t)want)) == NULL)
            return PyErr_NoMemory();
        nv = heap;
        n = pack(fields, heap, want);
    }
    long rv = 0;
    if (n >= 0) {
        switch (kind) {
        case SUBMIT_REQUEST:
            rv = f_submit_request(s, NULL, nv, (size_t)n, body ? f_provider : NULL, NULL);
            break;
        case SUBMIT_RESPONSE:
            rv = f_submit_response(s, stream_id, nv, (size_t)n, body ? f_provider : NULL);
            break;
        default:
            rv = f_submit_headers(s, 0, stream_id, NULL, nv, (size_t)n, NULL);
        }
    }
    PyMem_Free(heap);
    return n < 0 ? NULL : PyLong_FromLong(rv);
}

/* submit_request(session, fields, body) -> stream id or a negative nghttp2 error */
static PyObject *
fast_submit_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "submit_request(session, fields, body)");
        return NULL;
    }
    return submit(SUBMIT_REQUEST, args[0], 0, args[1], PyObject_IsTrue(args[2]));
}

/* submit_response(session, stream_id, fields, end) -> int: ``end`` 1 (or True): a response head
   that ends the stream; 2: a final response whose body is queued for the data provider; 0 (or
   False): a head whose body follows later, or a 1xx */
static PyObject *
fast_submit_response(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "submit_response(session, stream_id, fields, end)");
        return NULL;
    }
    long sid = PyLong_AsLong(args[1]);
    if (sid == -1 && PyErr_Occurred())
        return NULL;
    long end = PyLong_AsLong(args[3]);
    if (end == -1 && PyErr_Occurred())
        return NULL;
    return submit(end ? SUBMIT_RESPONSE : SUBMIT_HEADERS, args[0], (int32_t)sid, args[2], end == 2);
}

/* submit_whole(session, stream_id, fields, body, collector) -> bool: a final response and its whole
   body in one submit, the body kept in ``collector.bodies`` for the read callback to send from
   (no ``on_read``), when the peer's windows take all of it now, so it leaves with the next send.
   False, with nothing submitted, when they do not (or ``body`` is not bytes, or ``bind_extra``
   was not called, or a body already waits for the stream, or nghttp2 refused the submit);
   TypeError, with nothing submitted, for a field that is not plain bytes. */
static PyObject *
fast_submit_whole(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyObject_TypeCheck(args[4], &CollectorType)) {
        PyErr_SetString(PyExc_TypeError, "submit_whole(session, stream_id, fields, body, collector)");
        return NULL;
    }
    if (not_bound())
        return NULL;
    Collector *c = (Collector *)args[4];
    PyObject *body = args[3];
    long sid = PyLong_AsLong(args[1]);
    if (sid == -1 && PyErr_Occurred())
        return NULL;
    void *s = session_of(args[0]);
    if (s == NULL)
        return NULL;
    if (f_stream_window == NULL || f_session_window == NULL || c->bodies == NULL || !PyBytes_CheckExact(body))
        Py_RETURN_FALSE;
    Py_ssize_t n = PyBytes_GET_SIZE(body);
    if (n > f_session_window(s) || n > f_stream_window(s, (int32_t)sid))
        Py_RETURN_FALSE;
    PyObject *key = PyLong_FromLong(sid);
    if (key == NULL)
        return NULL;
    Py_ssize_t had = PyDict_GET_SIZE(c->bodies);
    if (PyDict_SetDefault(c->bodies, key, body) == NULL) { /* one lookup: insert unless one waits */
        Py_DECREF(key);
        return NULL;
    }
    if (PyDict_GET_SIZE(c->bodies) == had) { /* a body already waits for this stream: not ours to replace */
        Py_DECREF(key);
        Py_RETURN_FALSE;
    }
    PyObject *rv = submit(SUBMIT_RESPONSE, args[0], (int32_t)sid, args[2], 1);
    long code = rv == NULL ? -1 : PyLong_AsLong(rv);
    Py_XDECREF(rv);
    if (code < 0) { /* nothing was submitted (an exception, or nghttp2 said no): the body goes too */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (PyDict_DelItem(c->bodies, key) < 0)
            PyErr_Clear();
        PyErr_Restore(type, value, tb);
        Py_DECREF(key);
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_FALSE;
    }
    Py_DECREF(key);
    Py_RETURN_TRUE;
}

/* The ``n`` addresses (ints) in ``objs`` as pointers in ``out``; -1 with an exception set
   (``zero``, a ValueError, for an address that is 0). */
static int
addresses(PyObject **objs, void **out, int n, const char *zero)
{
    for (int i = 0; i < n; i++) {
        out[i] = PyLong_AsVoidPtr(objs[i]);
        if (out[i] == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, zero);
            return -1;
        }
    }
    return 0;
}

/* bind_extra(stream_remote_window_size, remote_window_size, consume, want_read, submit_data,
   resume_data): the addresses of nghttp2_session_get_stream_remote_window_size and
   nghttp2_session_get_remote_window_size (which ``submit_whole`` asks), and of the functions
   behind ``consume``, ``want_read``, ``submit_data`` and ``resume_data`` (a direct call costs
   less than one through cffi). */
static PyObject *
fast_bind_extra(PyObject *module, PyObject *args)
{
    PyObject *a[6];
    if (!PyArg_ParseTuple(args, "OOOOOO:bind_extra", &a[0], &a[1], &a[2], &a[3], &a[4], &a[5]))
        return NULL;
    void *p[6];
    if (addresses(a, p, 6, "bind_extra: a function address is 0") < 0)
        return NULL;
    f_stream_window = (stream_window_fn)p[0];
    f_session_window = (session_window_fn)p[1];
    f_consume = (consume_fn)p[2];
    f_want_read = (want_read_fn)p[3];
    f_submit_data = (submit_data_fn)p[4];
    f_resume_data = (resume_data_fn)p[5];
    Py_RETURN_NONE;
}

/* The session (args[0]) and stream id (args[1]) of a call that takes ``want`` arguments and
   needs a function ``bind_extra`` supplied (``bound``: it did); -1 with an exception set
   (``usage`` for a TypeError) when they cannot be had. */
static int
stream_call(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, const char *usage, int bound, void **s,
            int32_t *sid)
{
    if (nargs != want) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    if (!bound) {
        PyErr_SetString(PyExc_RuntimeError, "_ngfast.bind_extra() has not been called");
        return -1;
    }
    *s = session_of(args[0]);
    if (*s == NULL)
        return -1;
    long v = PyLong_AsLong(args[1]);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *sid = (int32_t)v;
    return 0;
}

/* submit_data(session, stream_id) -> int: nghttp2_submit_data with END_STREAM and our data
   provider (the stream's body is read through ``on_read``). */
static PyObject *
fast_submit_data(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    void *s;
    int32_t sid;
    if (not_bound()
        || stream_call(args, nargs, 2, "submit_data(session, stream_id)", f_submit_data != NULL, &s, &sid) < 0)
        return NULL;
    return PyLong_FromLong(f_submit_data(s, 0x1 /* NGHTTP2_FLAG_END_STREAM */, sid, f_provider));
}

/* resume_data(session, stream_id) -> int: nghttp2_session_resume_data. */
static PyObject *
fast_resume_data(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    void *s;
    int32_t sid;
    if (stream_call(args, nargs, 2, "resume_data(session, stream_id)", f_resume_data != NULL, &s, &sid) < 0)
        return NULL;
    return PyLong_FromLong(f_resume_data(s, sid));
}

/* consume(session, stream_id, n) -> int: nghttp2_session_consume. */
static PyObject *
fast_consume(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    void *s;
    int32_t sid;
    if (stream_call(args, nargs, 3, "consume(session, stream_id, n)", f_consume != NULL, &s, &sid) < 0)
        return NULL;
    Py_ssize_t n = PyLong_AsSsize_t(args[2]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "consume: n must not be negative");
        return NULL;
    }
    return PyLong_FromLong(f_consume(s, sid, (size_t)n));
}

/* want_read(session) -> bool: nghttp2_session_want_read. */
static PyObject *
fast_want_read(PyObject *module, PyObject *session)
{
    if (f_want_read == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_ngfast.bind_extra() has not been called");
        return NULL;
    }
    void *s = session_of(session);
    if (s == NULL)
        return NULL;
    return PyBool_FromLong(f_want_read(s));
}

/* bind(mem_recv, mem_send, submit_request, submit_response, submit_headers, provider, layout): the
   libnghttp2 function addresses (ints) to call, the address of the data provider requests with a
   body get (an nghttp2_data_provider whose read callback is cb_on_read), and ``layout``, the
   offsets in nghttp2_frame of
   (hd.stream_id, hd.type, hd.flags, rst_stream.error_code, headers.cat, goaway.last_stream_id,
   goaway.error_code, goaway.opaque_data, goaway.opaque_data_len). */
static PyObject *
fast_bind(PyObject *module, PyObject *args)
{
    PyObject *a[6];
    Py_ssize_t lay[9];
    if (!PyArg_ParseTuple(args, "OOOOOO(nnnnnnnnn):bind", &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &lay[0],
                          &lay[1], &lay[2], &lay[3], &lay[4], &lay[5], &lay[6], &lay[7], &lay[8]))
        return NULL;
    for (int i = 0; i < 9; i++) {
        if (lay[i] < 0 || lay[i] > 256) {
            PyErr_SetString(PyExc_ValueError, "bind: implausible nghttp2_frame layout");
            return NULL;
        }
    }
    void *p[6];
    if (addresses(a, p, 6, "bind: a function address is 0") < 0)
        return NULL;
    f_mem_recv = (mem_recv_fn)p[0];
    f_mem_send = (mem_send_fn)p[1];
    f_submit_request = (submit_request_fn)p[2];
    f_submit_response = (submit_response_fn)p[3];
    f_submit_headers = (submit_headers_fn)p[4];
    f_provider = p[5];
    L.sid = lay[0];
    L.type = lay[1];
    L.flags = lay[2];
    L.rst_code = lay[3];
    L.cat = lay[4];
    L.ga_last = lay[5];
    L.ga_code = lay[6];
    L.ga_data = lay[7];
    L.ga_len = lay[8];
    Py_RETURN_NONE;
}

/* callbacks() -> dict: name -> address of the C callbacks to put in a callback table. */
static PyObject *
fast_callbacks(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("{s:N,s:N,s:N,s:N,s:N,s:N}",
                         "on_header", PyLong_FromVoidPtr((void *)cb_on_header),
                         "on_begin_headers", PyLong_FromVoidPtr((void *)cb_on_begin_headers),
                         "on_data_chunk_recv", PyLong_FromVoidPtr((void *)cb_on_data_chunk_recv),
                         "on_frame_recv", PyLong_FromVoidPtr((void *)cb_on_frame_recv),
                         "on_stream_close", PyLong_FromVoidPtr((void *)cb_on_stream_close),
                         "data_source_read", PyLong_FromVoidPtr((void *)cb_on_read));
}

/* === header lists (_h2_headers's lift_request, lift_response and _clean) ===
 *
 * The same rules as the Python functions in _h2_headers.py, which stay the
 * reference (tests/unit/codec/test_h2_headers.py compares the two on generated
 * lists). For a field that is not an exact (bytes, bytes) tuple each calls the
 * Python version itself (handed over by ``headers_setup``), so _h2_headers can
 * bind its names to these directly. */

static PyObject *RequestHeadType, *ResponseHeadType, *NeverIndexedType;

/* Whether a setup call has given ``p``; else a RuntimeError naming it. */
static int
ready(PyObject *p, const char *setup)
{
    if (p == NULL)
        PyErr_Format(PyExc_RuntimeError, "_ngfast.%s() has not been called", setup);
    return p != NULL;
}


static PyObject *LiftRequestPy, *LiftResponsePy, *CleanPy; /* the Python reference functions */

/* headers_setup(RequestHead, ResponseHead, NeverIndexedHeaderTuple, lift_request_py,
                 lift_response_py, clean_py) */
static PyObject *
fast_headers_setup(PyObject *module, PyObject *args)
{
    PyObject *a[6];
    if (!PyArg_UnpackTuple(args, "headers_setup", 6, 6, &a[0], &a[1], &a[2], &a[3], &a[4], &a[5]))
        return NULL;
    Py_XSETREF(RequestHeadType, Py_NewRef(a[0]));
    Py_XSETREF(ResponseHeadType, Py_NewRef(a[1]));
    Py_XSETREF(NeverIndexedType, Py_NewRef(a[2]));
    Py_XSETREF(LiftRequestPy, Py_NewRef(a[3]));
    Py_XSETREF(LiftResponsePy, Py_NewRef(a[4]));
    Py_XSETREF(CleanPy, Py_NewRef(a[5]));
    Py_RETURN_NONE;
}

/* Is f an exact (bytes, bytes) tuple? Sets name and value (borrowed). */
static int
pair(PyObject *f, PyObject **name, PyObject **value)
{
    if (!PyTuple_CheckExact(f) || PyTuple_GET_SIZE(f) != 2)
        return 0;
    *name = PyTuple_GET_ITEM(f, 0);
    *value = PyTuple_GET_ITEM(f, 1);
    return PyBytes_CheckExact(*name) && PyBytes_CheckExact(*value);
}

/* Are all items of the list exact (bytes, bytes) tuples? */
static int
all_pairs(PyObject *fields)
{
    PyObject *name, *value;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(fields); i++)
        if (!pair(PyList_GET_ITEM(fields, i), &name, &value))
            return 0;
    return 1;
}

/* The list size the caller passed (``size``), if it did, over the one counted here. */
static int
given_size(PyObject *size, Py_ssize_t *list_size)
{
    if (size == Py_None)
        return 0;
    *list_size = PyLong_AsSsize_t(size);
    return *list_size == -1 && PyErr_Occurred() ? -1 : 0;
}

static int
eq(PyObject *b, const char *lit, Py_ssize_t n)
{
    return PyBytes_GET_SIZE(b) == n && memcmp(PyBytes_AS_STRING(b), lit, (size_t)n) == 0;
}
#define EQ(b, lit) eq((b), (lit), (Py_ssize_t)sizeof(lit) - 1)

/* ASCII case-insensitive equality of a bytes value with a lower-case literal. */
static int
ieq(PyObject *b, const char *lit, Py_ssize_t n)
{
    if (PyBytes_GET_SIZE(b) != n)
        return 0;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(b);
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char ch = p[i];
        if (ch >= 'A' && ch <= 'Z')
            ch += 32;
        if (ch != (unsigned char)lit[i])
            return 0;
    }
    return 1;
}
#define IEQ(b, lit) ieq((b), (lit), (Py_ssize_t)sizeof(lit) - 1)

static int
is_digits(PyObject *b) /* bytes.isdigit() */
{
    Py_ssize_t n = PyBytes_GET_SIZE(b);
    const char *p = PyBytes_AS_STRING(b);
    if (n == 0)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i] < '0' || p[i] > '9')
            return 0;
    return 1;
}

static PyObject *
to_int(PyObject *digits) /* int(b"123") for digits-only bytes */
{
    return PyLong_FromString(PyBytes_AS_STRING(digits), NULL, 10);
}

/* connection-specific names (RFC 9113 8.2.2), as _h2_headers.CONNECTION_SPECIFIC */
static int
connection_specific(PyObject *name)
{
    return EQ(name, "connection") || EQ(name, "keep-alive") || EQ(name, "proxy-connection")
        || EQ(name, "transfer-encoding") || EQ(name, "upgrade");
}

/* _connection_specific(name, value): a reason or NULL (names compared exactly, as there). */
static const char *
special_reason(PyObject *name, PyObject *value)
{
    if (connection_specific(name))
        return "connection-specific header field";
    if (EQ(name, "te") && !IEQ(value, "trailers"))
        return "te other than trailers";
    return NULL;
}

static unsigned char token_lower[256]; /* _h2_headers._TOKEN */

/* _bad_fields(fields[first:]): the names are checked before the values. */
static const char *
bad_fields(PyObject *fields, Py_ssize_t first)
{
    Py_ssize_t n = PyList_GET_SIZE(fields);
    int bad_value = 0;
    for (Py_ssize_t i = first; i < n; i++) {
        PyObject *f = PyList_GET_ITEM(fields, i);
        PyObject *name = PyTuple_GET_ITEM(f, 0), *value = PyTuple_GET_ITEM(f, 1);
        Py_ssize_t nl = PyBytes_GET_SIZE(name), vl = PyBytes_GET_SIZE(value);
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(name);
        if (nl == 0)
            return "invalid header name";
        for (Py_ssize_t j = 0; j < nl; j++)
            if (!token_lower[p[j]])
                return "invalid header name";
        if (bad_value)
            continue;
        const unsigned char *v = (const unsigned char *)PyBytes_AS_STRING(value);
        if (vl && (v[0] == ' ' || v[0] == '\t' || v[vl - 1] == ' ' || v[vl - 1] == '\t'))
            bad_value = 1;
        for (Py_ssize_t j = 0; j < vl && !bad_value; j++)
            if (v[j] == 0 || v[j] == '\r' || v[j] == '\n')
                bad_value = 1;
    }
    return bad_value ? "invalid header value" : NULL;
}

static PyObject *
reason(const char *r)
{
    return PyUnicode_FromString(r);
}

/* lift_request(stream_id, fields, end_stream, max_size, max_count, size=None) */
static PyObject *
fast_lift_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 5 || nargs > 6) {
        PyErr_SetString(PyExc_TypeError, "lift_request(stream_id, fields, end_stream, max_size, max_count, size=None)");
        return NULL;
    }
    if (!ready(LiftRequestPy, "headers_setup"))
        return NULL;
    PyObject *fields = args[1], *size = nargs > 5 ? args[5] : Py_None;
    if (!PyList_CheckExact(fields) || !all_pairs(fields))
        return PyObject_Vectorcall(LiftRequestPy, args, (size_t)nargs, NULL);
    Py_ssize_t n = PyList_GET_SIZE(fields);
    Py_ssize_t max_size = PyLong_AsSsize_t(args[3]), max_count = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred())
        return NULL;
    if (n > max_count)
        return PyLong_FromLong(431);
    PyObject *method = NULL, *scheme = NULL, *path = NULL, *authority = NULL, *host = NULL;
    PyObject *content_length = NULL; /* new reference */
    PyObject *headers = PyList_New(0), *cookies = NULL, *out = NULL;
    const char *why = NULL;
    Py_ssize_t first = -1, list_size = 0;
    int expect = 0;
    if (headers == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PyList_GET_ITEM(fields, i);
        PyObject *name = PyTuple_GET_ITEM(f, 0), *value = PyTuple_GET_ITEM(f, 1);
        list_size += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 32;
        if (PyBytes_GET_SIZE(name) && PyBytes_AS_STRING(name)[0] == ':') {
            if (first >= 0) {
                why = "pseudo-header after regular header";
                goto done;
            }
            if (EQ(name, ":method") && method == NULL)
                method = value;
            else if (EQ(name, ":path") && path == NULL)
                path = value;
            else if (EQ(name, ":scheme") && scheme == NULL)
                scheme = value;
            else if (EQ(name, ":authority") && authority == NULL)
                authority = value;
            else {
                why = "unknown, duplicate or response pseudo-header";
                goto done;
            }
            continue;
        }
        if (first < 0)
            first = i;
        if ((why = special_reason(name, value)) != NULL)
            goto done;
        if (EQ(name, "cookie")) {
            if (cookies == NULL && (cookies = PyList_New(0)) == NULL)
                goto error;
            if (PyList_Append(cookies, value) < 0)
                goto error;
            continue;
        }
        if (EQ(name, "host")) {
            if (host != NULL) {
                why = "duplicate host";
                goto done;
            }
            host = value;
            continue;
        }
        if (EQ(name, "content-length")) {
            if (!is_digits(value)) {
                why = "invalid content-length";
                goto done;
            }
            PyObject *cl = to_int(value);
            if (cl == NULL)
                goto error;
            if (content_length != NULL) {
                int same = PyObject_RichCompareBool(cl, content_length, Py_EQ);
                if (same <= 0) {
                    Py_DECREF(cl);
                    if (same < 0)
                        goto error;
                    why = "invalid content-length";
                    goto done;
                }
            }
            Py_XSETREF(content_length, cl);
        } else if (EQ(name, "expect")) {
            expect = IEQ(value, "100-continue");
        }
        if (PyList_Append(headers, f) < 0)
            goto error;
    }
    if (given_size(size, &list_size) < 0)
        goto error;
    if (list_size > max_size) {
        out = PyLong_FromLong(431);
        goto done;
    }
    if (first >= 0 && (why = bad_fields(fields, first)) != NULL)
        goto done;
    if (method == NULL) {
        why = "missing :method";
        goto done;
    }
    if (host != NULL) {
        if (authority == NULL)
            authority = host;
        else if (PyBytes_GET_SIZE(authority) != PyBytes_GET_SIZE(host)
                 || memcmp(PyBytes_AS_STRING(authority), PyBytes_AS_STRING(host),
                           (size_t)PyBytes_GET_SIZE(host)) != 0) {
            why = ":authority and host differ";
            goto done;
        }
    }
    PyObject *upgrade = Py_None, *https = NULL;
    if (EQ(method, "CONNECT")) {
        if (scheme != NULL || path != NULL || authority == NULL) {
            why = "CONNECT needs :authority and no :scheme/:path";
            goto done;
        }
        path = authority;
        https = PyBytes_FromString("https");
        upgrade = PyBytes_FromString("connect");
        if (https == NULL || upgrade == NULL) {
            Py_XDECREF(https);
            if (upgrade != Py_None)
                Py_XDECREF(upgrade);
            goto error;
        }
        scheme = https;
    } else if (scheme == NULL || path == NULL || PyBytes_GET_SIZE(scheme) == 0 || PyBytes_GET_SIZE(path) == 0) {
        why = "missing :scheme or :path";
        goto done;
    } else {
        Py_INCREF(upgrade);
    }
    if (cookies != NULL) {
        PyObject *sep = PyBytes_FromString("; ");
        PyObject *joined = sep ? _PyBytes_Join(sep, cookies) : NULL;
        Py_XDECREF(sep);
        PyObject *t = joined ? Py_BuildValue("(yN)", "cookie", joined) : NULL;
        if (t == NULL || PyList_Append(headers, t) < 0) {
            Py_XDECREF(t);
            Py_XDECREF(https);
            Py_DECREF(upgrade);
            goto error;
        }
        Py_DECREF(t);
    }
    {
        PyObject *sid = args[0];
        PyObject *cargs[12] = {sid, method, path, authority ? authority : Py_None, headers, NULL, scheme,
                               Py_True, upgrade, expect ? Py_True : Py_False,
                               PyObject_IsTrue(args[2]) ? Py_True : Py_False,
                               content_length ? content_length : Py_None};
        cargs[5] = PyUnicode_FromString("2");
        if (cargs[5] != NULL)
            out = PyObject_Vectorcall(RequestHeadType, cargs, 12, NULL);
        Py_XDECREF(cargs[5]);
        Py_XDECREF(https);
        Py_DECREF(upgrade);
    }
    goto finish;
done:
    if (why != NULL)
        out = reason(why);
    goto finish;
error:
    out = NULL;
finish:
    Py_XDECREF(content_length);
    Py_XDECREF(cookies);
    Py_DECREF(headers);
    return out;
}

/* lift_response(stream_id, fields, end_stream, max_size, max_count, checked=False, size=None) */
static PyObject *
fast_lift_response(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 5 || nargs > 7) {
        PyErr_SetString(PyExc_TypeError,
                        "lift_response(stream_id, fields, end_stream, max_size, max_count, checked=False, size=None)");
        return NULL;
    }
    if (!ready(LiftResponsePy, "headers_setup"))
        return NULL;
    PyObject *fields = args[1], *size = nargs > 6 ? args[6] : Py_None;
    if (!PyList_CheckExact(fields) || !all_pairs(fields))
        return PyObject_Vectorcall(LiftResponsePy, args, (size_t)nargs, NULL);
    Py_ssize_t n = PyList_GET_SIZE(fields);
    Py_ssize_t max_size = PyLong_AsSsize_t(args[3]), max_count = PyLong_AsSsize_t(args[4]);
    int checked = nargs > 5 && PyObject_IsTrue(args[5]);
    if (PyErr_Occurred())
        return NULL;
    if (n > max_count)
        return reason("too many response headers");
    PyObject *status = NULL, *content_length = NULL, *out = NULL;
    PyObject *headers = PyList_New(0);
    const char *why = NULL;
    Py_ssize_t first = -1, list_size = 0;
    if (headers == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PyList_GET_ITEM(fields, i);
        PyObject *name = PyTuple_GET_ITEM(f, 0), *value = PyTuple_GET_ITEM(f, 1);
        list_size += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 32;
        if (PyBytes_GET_SIZE(name) && PyBytes_AS_STRING(name)[0] == ':') {
            if (first >= 0 || !EQ(name, ":status") || status != NULL) {
                why = "bad pseudo-header in response";
                goto done;
            }
            status = value;
            continue;
        }
        if (first < 0)
            first = i;
        if (!checked && (why = special_reason(name, value)) != NULL)
            goto done;
        if (EQ(name, "content-length")) {
            if (!is_digits(value)) {
                why = "invalid content-length";
                goto done;
            }
            PyObject *cl = to_int(value);
            if (cl == NULL)
                goto error;
            Py_XSETREF(content_length, cl);
        }
        if (PyList_Append(headers, f) < 0)
            goto error;
    }
    if (given_size(size, &list_size) < 0)
        goto error;
    if (list_size > max_size) {
        why = "response headers too large";
        goto done;
    }
    if (first >= 0 && !checked && (why = bad_fields(fields, first)) != NULL)
        goto done;
    if (status == NULL || PyBytes_GET_SIZE(status) != 3 || !is_digits(status) || EQ(status, "101")) {
        why = "missing or invalid :status";
        goto done;
    }
    {
        const char *d = PyBytes_AS_STRING(status);
        PyObject *code = PyLong_FromLong((d[0] - '0') * 100 + (d[1] - '0') * 10 + (d[2] - '0'));
        PyObject *version = PyUnicode_FromString("2");
        PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
        if (code != NULL && version != NULL && empty != NULL) {
            PyObject *cargs[8] = {args[0], code, headers, version, empty, Py_True,
                                  PyObject_IsTrue(args[2]) ? Py_True : Py_False,
                                  content_length ? content_length : Py_None};
            out = PyObject_Vectorcall(ResponseHeadType, cargs, 8, NULL);
        }
        Py_XDECREF(code);
        Py_XDECREF(version);
        Py_XDECREF(empty);
    }
    goto finish;
done:
    out = reason(why);
    goto finish;
error:
    out = NULL;
finish:
    Py_XDECREF(content_length);
    Py_DECREF(headers);
    return out;
}

/* ASCII lower-case copy of ``name`` (the same object, with a new reference, when it has none). */
static PyObject *
lower(PyObject *name)
{
    Py_ssize_t n = PyBytes_GET_SIZE(name);
    const char *p = PyBytes_AS_STRING(name);
    Py_ssize_t i = 0;
    while (i < n && !(p[i] >= 'A' && p[i] <= 'Z'))
        i++;
    if (i == n)
        return Py_NewRef(name);
    PyObject *out = PyBytes_FromStringAndSize(p, n);
    if (out == NULL)
        return NULL;
    char *q = PyBytes_AS_STRING(out);
    for (; i < n; i++)
        if (q[i] >= 'A' && q[i] <= 'Z')
            q[i] += 32;
    return out;
}

static int
is_space(char c) /* bytes.strip()'s whitespace */
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\x0b' || c == '\x0c';
}

static int
is_tab_space(char c) /* bytes.strip(b" \t")'s whitespace */
{
    return c == ' ' || c == '\t';
}

/* Is ``want`` (``wl`` bytes) one of the comma-separated members of ``value``? Each member is
   cut at its first ';' when ``params``, stripped of what ``ws`` calls whitespace, lower-cased
   (ASCII) and compared with ``want`` byte for byte. */
static int
lists_member(PyObject *value, const char *want, Py_ssize_t wl, int params, int (*ws)(char))
{
    Py_ssize_t vl = PyBytes_GET_SIZE(value), start = 0;
    const char *v = PyBytes_AS_STRING(value);
    while (start <= vl) {
        Py_ssize_t end = start;
        while (end < vl && v[end] != ',')
            end++;
        Py_ssize_t a = start, b = end;
        if (params)
            for (b = a; b < end && v[b] != ';'; b++)
                ;
        while (a < b && ws(v[a]))
            a++;
        while (b > a && ws(v[b - 1]))
            b--;
        if (b - a == wl) {
            Py_ssize_t j = 0;
            for (; j < wl; j++) {
                char ch = v[a + j];
                if (ch >= 'A' && ch <= 'Z')
                    ch += 32;
                if (ch != want[j])
                    break;
            }
            if (j == wl)
                return 1;
        }
        start = end + 1;
    }
    return 0;
}

/* Does one of the Connection values (members split and stripped as ``ws`` says) name ``name``? */
static int
named_by(PyObject *name, PyObject **conn, Py_ssize_t nconn, int (*ws)(char))
{
    for (Py_ssize_t k = 0; k < nconn; k++)
        if (lists_member(conn[k], PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name), 0, ws))
            return 1;
    return 0;
}

/* The Connection values of a list of (name, value) tuples (borrowed), in ``*conn``: ``stack``
   when ``cap`` is room enough, else a PyMem block the caller frees. Names are matched exactly,
   or ASCII case-insensitively with ``any_case``. -1 (MemoryError set) when out of memory. */
static Py_ssize_t
connection_values(PyObject *fields, int any_case, PyObject **stack, Py_ssize_t cap, PyObject ***conn)
{
    Py_ssize_t n = PyList_GET_SIZE(fields), k = 0;
    *conn = stack;
    for (int pass = 0; pass < 2; pass++) {
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *f = PyList_GET_ITEM(fields, i), *name = PyTuple_GET_ITEM(f, 0);
            if (any_case ? IEQ(name, "connection") : EQ(name, "connection")) {
                if (pass)
                    (*conn)[k] = PyTuple_GET_ITEM(f, 1);
                k++;
            }
        }
        if (pass == 0) {
            if (k > cap && (*conn = PyMem_Malloc(sizeof(PyObject *) * (size_t)k)) == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            k = 0;
        }
    }
    return k;
}

/* clean(headers, out, drop_host) -> host or None */
static PyObject *
fast_clean(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "clean(headers, out, drop_host)");
        return NULL;
    }
    if (!ready(CleanPy, "headers_setup"))
        return NULL;
    PyObject *headers = args[0], *out = args[1];
    if (!PyList_CheckExact(headers) || !all_pairs(headers))
        return PyObject_Vectorcall(CleanPy, args, (size_t)nargs, NULL);
    int drop_host = PyObject_IsTrue(args[2]);
    Py_ssize_t n = PyList_GET_SIZE(headers);
    PyObject *stack_conn[8], **conn;
    Py_ssize_t nconn = connection_values(headers, 1, stack_conn, 8, &conn);
    if (nconn < 0)
        return NULL;
    PyObject *host = Py_None;
    Py_INCREF(host);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PyList_GET_ITEM(headers, i);
        PyObject *value = PyTuple_GET_ITEM(f, 1);
        PyObject *name = lower(PyTuple_GET_ITEM(f, 0));
        if (name == NULL)
            goto error;
        PyObject *item = NULL;
        if (connection_specific(name) || (PyBytes_GET_SIZE(name) && PyBytes_AS_STRING(name)[0] == ':')
            || (nconn && named_by(name, conn, nconn, is_space))) {
            Py_DECREF(name);
            continue;
        }
        if (EQ(name, "host")) {
            Py_SETREF(host, Py_NewRef(value));
            if (drop_host) {
                Py_DECREF(name);
                continue;
            }
        }
        if (EQ(name, "te") && !IEQ(value, "trailers")) {
            Py_DECREF(name);
            continue;
        }
        if (EQ(name, "authorization") || EQ(name, "proxy-authorization"))
            item = PyObject_CallFunctionObjArgs(NeverIndexedType, name, value, NULL);
        else if (name == PyTuple_GET_ITEM(f, 0))
            item = Py_NewRef(f); /* unchanged: the same tuple */
        else
            item = PyTuple_Pack(2, name, value);
        Py_DECREF(name);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            goto error;
        }
        Py_DECREF(item);
    }
    if (conn != stack_conn)
        PyMem_Free(conn);
    return host;
error:
    if (conn != stack_conn)
        PyMem_Free(conn);
    Py_DECREF(host);
    return NULL;
}

/* === request and response hygiene (http/headers.py's _hygiene_request_py,
 * _hygiene_response_py and new_request_id) ========================================================
 *
 * One pass over a head's fields with the same rules as the Python functions,
 * which stay the reference (tests/unit/http/test_hygiene_native.py compares the
 * two on generated heads). Each calls its Python version itself for anything
 * that is not the common case: fields that are not exact (bytes, bytes) tuples
 * with a non-empty name, a request with an ``upgrade``, a ``request_id``,
 * ``peer_ip`` or ``scheme`` that is neither str nor bytes. */

static PyObject *H_request_py, *H_response_py, *H_getrandbits, *I_64;
static PyObject *S_headers, *S_upgrade, *S_status;
static PyObject *C_te_trailers, *C_connection_upgrade, *B_xff, *B_xfp, *B_rid, *B_comma;

/* hygiene_setup(clean_request_py, clean_response_py, getrandbits) */
static PyObject *
fast_hygiene_setup(PyObject *module, PyObject *args)
{
    PyObject *a[3];
    if (!PyArg_UnpackTuple(args, "hygiene_setup", 3, 3, &a[0], &a[1], &a[2]))
        return NULL;
    if (S_headers == NULL) {
        I_64 = PyLong_FromLong(64);
        S_headers = PyUnicode_InternFromString("headers");
        S_upgrade = PyUnicode_InternFromString("upgrade");
        S_status = PyUnicode_InternFromString("status");
        C_te_trailers = Py_BuildValue("(y#y#)", "te", (Py_ssize_t)2, "trailers", (Py_ssize_t)8);
        C_connection_upgrade = Py_BuildValue("(y#y#)", "connection", (Py_ssize_t)10, "upgrade", (Py_ssize_t)7);
        B_xff = PyBytes_FromString("x-forwarded-for");
        B_xfp = PyBytes_FromString("x-forwarded-proto");
        B_rid = PyBytes_FromString("x-request-id");
        B_comma = PyBytes_FromString(", ");
        if (!S_headers || !S_upgrade || !S_status || !C_te_trailers || !C_connection_upgrade || !B_xff
            || !B_xfp || !B_rid || !B_comma || !I_64)
            return NULL;
    }
    Py_XSETREF(H_request_py, Py_NewRef(a[0]));
    Py_XSETREF(H_response_py, Py_NewRef(a[1]));
    Py_XSETREF(H_getrandbits, Py_NewRef(a[2]));
    Py_RETURN_NONE;
}

/* 64 bits from ``getrandbits(64)``; -1 with an exception set on failure. */
static int
random64(unsigned long long *out)
{
    PyObject *v = PyObject_CallOneArg(H_getrandbits, I_64);
    if (v == NULL)
        return -1;
    *out = PyLong_AsUnsignedLongLong(v);
    Py_DECREF(v);
    return *out == (unsigned long long)-1 && PyErr_Occurred() ? -1 : 0;
}

/* new_request_id() -> bytes: headers._new_request_id_py, the same text from the same random
   state (``getrandbits(128)`` is ``getrandbits(64)`` twice, the low word first). */
static PyObject *
fast_new_request_id(PyObject *module, PyObject *unused)
{
    static const char hex[] = "0123456789abcdef";
    unsigned long long lo, hi;
    unsigned char b[16];
    if (!ready(H_getrandbits, "hygiene_setup") || random64(&lo) < 0 || random64(&hi) < 0)
        return NULL;
    for (int i = 0; i < 8; i++) {
        b[7 - i] = (unsigned char)(hi >> (8 * i));
        b[15 - i] = (unsigned char)(lo >> (8 * i));
    }
    b[6] = (unsigned char)((b[6] & 0x0F) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3F) | 0x80); /* variant 10 */
    PyObject *out = PyBytes_FromStringAndSize(NULL, 36);
    if (out == NULL)
        return NULL;
    char *w = PyBytes_AS_STRING(out);
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *w++ = '-';
        *w++ = hex[b[i] >> 4];
        *w++ = hex[b[i] & 15];
    }
    return out;
}

/* A list of exact (bytes, bytes) tuples with non-empty names? */
static int
plain_fields(PyObject *fields)
{
    PyObject *name, *value;
    if (!PyList_CheckExact(fields))
        return 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(fields); i++)
        if (!pair(PyList_GET_ITEM(fields, i), &name, &value) || PyBytes_GET_SIZE(name) == 0)
            return 0;
    return 1;
}

/* The field actions of headers.py (_REQUEST_ACTIONS; the response's are a subset). */
enum { A_NONE = 0, A_DROP, A_CONNECTION, A_TE, A_UPGRADE, A_RID, A_XFF, A_XFP, A_XFCC };

static int
field_action(PyObject *name)
{
    const char *p = PyBytes_AS_STRING(name);
    switch (PyBytes_GET_SIZE(name)) {
    case 2: return memcmp(p, "te", 2) == 0 ? A_TE : A_NONE;
    case 7: return memcmp(p, "upgrade", 7) == 0 ? A_UPGRADE : A_NONE;
    case 10:
        if (memcmp(p, "connection", 10) == 0) return A_CONNECTION;
        return memcmp(p, "keep-alive", 10) == 0 ? A_DROP : A_NONE;
    case 12: return memcmp(p, "x-request-id", 12) == 0 ? A_RID : A_NONE;
    case 15: return memcmp(p, "x-forwarded-for", 15) == 0 ? A_XFF : A_NONE;
    case 16: return memcmp(p, "proxy-connection", 16) == 0 ? A_DROP : A_NONE;
    case 17:
        if (memcmp(p, "transfer-encoding", 17) == 0) return A_DROP;
        return memcmp(p, "x-forwarded-proto", 17) == 0 ? A_XFP : A_NONE;
    case 23: return memcmp(p, "x-forwarded-client-cert", 23) == 0 ? A_XFCC : A_NONE;
    default: return A_NONE;
    }
}

/* Never taken out by a Connection value: fields with a rule of their own (which never reach this
   test) and these (headers._NOT_NOMINATED). */
static int
never_nominated(PyObject *name)
{
    return EQ(name, "close") || EQ(name, "host") || EQ(name, "content-length");
}

/* headers._nominated for a field with no rule of its own: does a Connection value name it? */
static int
nominated(PyObject *name, PyObject **conn, Py_ssize_t nconn)
{
    return nconn && !never_nominated(name) && named_by(name, conn, nconn, is_tab_space);
}

static int
meshproxy_name(PyObject *name) /* starts with b"x-meshproxy-" */
{
    return PyBytes_GET_SIZE(name) >= 12 && memcmp(PyBytes_AS_STRING(name), "x-meshproxy-", 12) == 0;
}

static int
append_pair(PyObject *out, PyObject *name, PyObject *value)
{
    PyObject *t = PyTuple_Pack(2, name, value);
    if (t == NULL)
        return -1;
    int rv = PyList_Append(out, t);
    Py_DECREF(t);
    return rv;
}

/* str → its UTF-8 bytes (new reference); bytes as they are; NULL without an error otherwise. */
static PyObject *
as_bytes(PyObject *s)
{
    if (PyBytes_CheckExact(s))
        return Py_NewRef(s);
    if (PyUnicode_CheckExact(s))
        return PyUnicode_AsUTF8String(s);
    return NULL;
}

/* clean_request(head, inbound, peer_ip, scheme, request_id) -> x-request-id: headers._clean_request_py */
static PyObject *
fast_clean_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "clean_request(head, inbound, peer_ip, scheme, request_id)");
        return NULL;
    }
    if (!ready(H_request_py, "hygiene_setup"))
        return NULL;
    PyObject *head = args[0], *peer_ip = args[2], *scheme = args[3], *request_id = args[4];
    int inbound = PyObject_IsTrue(args[1]);
    if (inbound < 0)
        return NULL;
    PyObject *upgrade = PyObject_GetAttr(head, S_upgrade);
    if (upgrade == NULL)
        return NULL;
    Py_DECREF(upgrade); /* only compared with None below */
    PyObject *fields = PyObject_GetAttr(head, S_headers);
    if (fields == NULL)
        return NULL;
    if (upgrade != Py_None || !plain_fields(fields)
        || (request_id != Py_None && !PyBytes_CheckExact(request_id))
        || !(PyBytes_CheckExact(peer_ip) || PyUnicode_CheckExact(peer_ip))
        || !(PyBytes_CheckExact(scheme) || PyUnicode_CheckExact(scheme))) {
        Py_DECREF(fields);
        return PyObject_Vectorcall(H_request_py, args, (size_t)nargs, NULL);
    }
    PyObject *stack_conn[8], **conn = NULL, *stack_xff[8], **xff = stack_xff;
    PyObject *out = NULL, *rid = NULL, *ip = NULL, *res = NULL;
    Py_ssize_t nxff = 0, capxff = 8, xff_at = -1;
    int has_xfp = 0, has_te = 0;
    Py_ssize_t nconn = connection_values(fields, 0, stack_conn, 8, &conn);
    if (nconn < 0)
        goto done;
    Py_ssize_t n = PyList_GET_SIZE(fields);
    out = PyList_New(0);
    if (out == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(fields, i);
        PyObject *name = PyTuple_GET_ITEM(item, 0), *value = PyTuple_GET_ITEM(item, 1);
        PyObject *add = item;
        switch (field_action(name)) {
        case A_NONE:
            if (meshproxy_name(name) || nominated(name, conn, nconn))
                add = NULL;
            break;
        case A_RID:
            if (rid != NULL || PyBytes_GET_SIZE(value) == 0)
                add = NULL;
            else
                rid = Py_NewRef(value);
            break;
        case A_XFF:
            if (inbound) {
                if (xff_at < 0)
                    xff_at = PyList_GET_SIZE(out);
                else
                    add = NULL;
                if (PyBytes_GET_SIZE(value)) {
                    if (nxff == capxff) {
                        PyObject **grown = PyMem_Malloc(sizeof(PyObject *) * (size_t)(capxff * 2));
                        if (grown == NULL) {
                            PyErr_NoMemory();
                            goto done;
                        }
                        memcpy(grown, xff, sizeof(PyObject *) * (size_t)nxff);
                        if (xff != stack_xff)
                            PyMem_Free(xff);
                        xff = grown;
                        capxff *= 2;
                    }
                    xff[nxff++] = value;
                }
            }
            break;
        case A_XFP:
            if (inbound)
                add = NULL;
            else
                has_xfp = 1;
            break;
        case A_TE:
            if (!has_te && lists_member(value, "trailers", 8, 1, is_tab_space)) { /* _offers_trailers */
                has_te = 1;
                add = C_te_trailers;
            } else {
                add = NULL;
            }
            break;
        default: /* A_DROP, A_CONNECTION, A_XFCC, and A_UPGRADE: this head is no upgrade */
            add = NULL;
        }
        if (add != NULL && PyList_Append(out, add) < 0)
            goto done;
    }
    if (rid == NULL) {
        if (request_id != Py_None && PyBytes_GET_SIZE(request_id))
            rid = Py_NewRef(request_id);
        else if ((rid = fast_new_request_id(module, NULL)) == NULL)
            goto done;
        if (append_pair(out, B_rid, rid) < 0)
            goto done;
    }
    if (inbound) {
        if ((ip = as_bytes(peer_ip)) == NULL)
            goto done;
        if (xff_at < 0) {
            if (append_pair(out, B_xff, ip) < 0)
                goto done;
        } else {
            Py_ssize_t total = PyBytes_GET_SIZE(ip);
            for (Py_ssize_t k = 0; k < nxff; k++)
                total += PyBytes_GET_SIZE(xff[k]) + 2;
            PyObject *joined = PyBytes_FromStringAndSize(NULL, total);
            if (joined == NULL)
                goto done;
            char *w = PyBytes_AS_STRING(joined);
            for (Py_ssize_t k = 0; k < nxff; k++) {
                memcpy(w, PyBytes_AS_STRING(xff[k]), (size_t)PyBytes_GET_SIZE(xff[k]));
                w += PyBytes_GET_SIZE(xff[k]);
                *w++ = ',';
                *w++ = ' ';
            }
            memcpy(w, PyBytes_AS_STRING(ip), (size_t)PyBytes_GET_SIZE(ip));
            PyObject *t = PyTuple_Pack(2, B_xff, joined);
            Py_DECREF(joined);
            if (t == NULL)
                goto done;
            PyList_SetItem(out, xff_at, t); /* steals t */
        }
    }
    if (!has_xfp) {
        PyObject *sb = as_bytes(scheme);
        if (sb == NULL)
            goto done;
        int rv = append_pair(out, B_xfp, sb);
        Py_DECREF(sb);
        if (rv < 0)
            goto done;
    }
    if (PyObject_SetAttr(head, S_headers, out) < 0)
        goto done;
    res = Py_NewRef(rid);
done:
    if (conn != NULL && conn != stack_conn)
        PyMem_Free(conn);
    if (xff != stack_xff)
        PyMem_Free(xff);
    Py_XDECREF(out);
    Py_XDECREF(rid);
    Py_XDECREF(ip);
    Py_DECREF(fields);
    return res;
}

/* clean_response(head, local) -> None: headers._clean_response_py */
static PyObject *
fast_clean_response(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "clean_response(head, local)");
        return NULL;
    }
    if (!ready(H_response_py, "hygiene_setup"))
        return NULL;
    PyObject *head = args[0];
    int local = PyObject_IsTrue(args[1]);
    if (local < 0)
        return NULL;
    PyObject *status = PyObject_GetAttr(head, S_status);
    if (status == NULL)
        return NULL;
    long code = PyLong_CheckExact(status) ? PyLong_AsLong(status) : -2;
    Py_DECREF(status);
    if (code == -1 && PyErr_Occurred())
        PyErr_Clear(); /* out of range: not 101 */
    PyObject *fields = PyObject_GetAttr(head, S_headers);
    if (fields == NULL)
        return NULL;
    if (code == -2 || !plain_fields(fields)) {
        Py_DECREF(fields);
        return PyObject_Vectorcall(H_response_py, args, (size_t)nargs, NULL);
    }
    int keep_upgrade = code == 101;
    PyObject *stack_conn[8], **conn = NULL, *out = NULL, *res = NULL;
    Py_ssize_t nconn = connection_values(fields, 0, stack_conn, 8, &conn);
    if (nconn < 0)
        goto done;
    Py_ssize_t n = PyList_GET_SIZE(fields);
    out = PyList_New(0);
    if (out == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(fields, i);
        PyObject *name = PyTuple_GET_ITEM(item, 0);
        int keep;
        switch (field_action(name)) {
        case A_NONE:
            keep = !((!local && meshproxy_name(name)) || nominated(name, conn, nconn));
            break;
        case A_RID: case A_XFF: case A_XFP: case A_XFCC: /* no response rule, and never nominated */
            keep = 1;
            break;
        case A_UPGRADE:
            keep = keep_upgrade;
            break;
        default: /* connection, te and the dropped hop-by-hop fields */
            keep = 0;
        }
        if (keep && PyList_Append(out, item) < 0)
            goto done;
    }
    if (keep_upgrade && PyList_Append(out, C_connection_upgrade) < 0)
        goto done;
    if (PyObject_SetAttr(head, S_headers, out) < 0)
        goto done;
    res = Py_NewRef(Py_None);
done:
    if (conn != NULL && conn != stack_conn)
        PyMem_Free(conn);
    Py_XDECREF(out);
    Py_DECREF(fields);
    return res;
}

/* === the HTTP/1.1 express lane's head loops (http/express_heads.py) =========
 *
 * ``plain_request`` and ``plain_response`` read each raw field line through the
 * memo of lines already classified; these are their loops, with the memo dicts,
 * the Python classifiers (for lines not in the memo) and ``new_request_id``
 * handed over by ``express_setup``. The Python functions stay the reference
 * (tests/unit/http/test_express_heads.py runs both), and run for any input that
 * is not a list of exact bytes, so these can stand in for them directly. */

enum { K_HOST = 0, K_CL, K_CLOSE, K_RID, K_XFF, K_XFP, K_UNDER, K_ODD, K_CHUNKED, K_GRPC };
static PyObject *X_req_memo, *X_resp_memo, *X_request_line, *X_response_line, *X_new_rid;
static PyObject *X_request_py, *X_response_py;

/* express_setup(request_memo, response_memo, request_line, response_line, new_request_id,
                 plain_request_py, plain_response_py) */
static PyObject *
fast_express_setup(PyObject *module, PyObject *args)
{
    PyObject *a[7];
    if (!PyArg_UnpackTuple(args, "express_setup", 7, 7, &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &a[6]))
        return NULL;
    if (!PyDict_CheckExact(a[0]) || !PyDict_CheckExact(a[1])) {
        PyErr_SetString(PyExc_TypeError, "express_setup: the memos must be dicts");
        return NULL;
    }
    Py_XSETREF(X_req_memo, Py_NewRef(a[0]));
    Py_XSETREF(X_resp_memo, Py_NewRef(a[1]));
    Py_XSETREF(X_request_line, Py_NewRef(a[2]));
    Py_XSETREF(X_response_line, Py_NewRef(a[3]));
    Py_XSETREF(X_new_rid, Py_NewRef(a[4]));
    Py_XSETREF(X_request_py, Py_NewRef(a[5]));
    Py_XSETREF(X_response_py, Py_NewRef(a[6]));
    Py_RETURN_NONE;
}

/* What ``line`` was classified as: a new reference, Py_None (decline), or NULL (error). */
static PyObject *
classify(PyObject *memo, PyObject *classifier, PyObject *line, int known_only)
{
    PyObject *e = PyDict_GetItemWithError(memo, line);
    if (e != NULL)
        return Py_NewRef(e);
    if (PyErr_Occurred())
        return NULL;
    if (known_only)
        Py_RETURN_NONE;
    return PyObject_CallOneArg(classifier, line);
}

/* A memo entry that is a tuple (kind, ...) of the expected size: its kind, else -1. */
static long
kind_of(PyObject *e, Py_ssize_t size)
{
    if (!PyTuple_CheckExact(e) || PyTuple_GET_SIZE(e) < size)
        return -1;
    long k = PyLong_AsLong(PyTuple_GET_ITEM(e, 0));
    if (k == -1 && PyErr_Occurred())
        PyErr_Clear();
    return k;
}

/* prefix + middle + suffix as one bytes object */
static PyObject *
cat3(const char *prefix, PyObject *middle, const char *suffix)
{
    Py_ssize_t a = (Py_ssize_t)strlen(prefix), b = PyBytes_GET_SIZE(middle), c = (Py_ssize_t)strlen(suffix);
    PyObject *out = PyBytes_FromStringAndSize(NULL, a + b + c);
    if (out == NULL)
        return NULL;
    char *p = PyBytes_AS_STRING(out);
    memcpy(p, prefix, (size_t)a);
    memcpy(p + a, PyBytes_AS_STRING(middle), (size_t)b);
    memcpy(p + a + b, suffix, (size_t)c);
    return out;
}

static int
append_new(PyObject *list, PyObject *item) /* steals item */
{
    if (item == NULL)
        return -1;
    int rv = PyList_Append(list, item);
    Py_DECREF(item);
    return rv;
}

static int
all_bytes(PyObject *lines)
{
    if (!PyList_CheckExact(lines))
        return 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(lines); i++)
        if (!PyBytes_CheckExact(PyList_GET_ITEM(lines, i)))
            return 0;
    return 1;
}

/* plain_response(lines, known_only=False) -> (lines, cl, chunked, keep, grpc) or None */
static PyObject *
fast_plain_response(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 1 && nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "plain_response(lines, known_only=False)");
        return NULL;
    }
    if (!ready(X_resp_memo, "express_setup"))
        return NULL;
    PyObject *lines = args[0];
    if (!all_bytes(lines))
        return PyObject_Vectorcall(X_response_py, args, (size_t)nargs, NULL);
    int known_only = nargs == 2 && PyObject_IsTrue(args[1]);
    PyObject *out = PyList_New(0), *cl = NULL, *grpc = NULL, *res = NULL;
    int chunked = 0, keep = 1;
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(lines); i++) {
        PyObject *e = classify(X_resp_memo, X_response_line, PyList_GET_ITEM(lines, i), known_only);
        if (e == NULL)
            goto error;
        if (e == Py_None)
            goto decline_e;
        if (PyBytes_CheckExact(e)) {
            if (append_new(out, e) < 0)
                goto error;
            continue;
        }
        switch (kind_of(e, 1)) {
        case K_CL:
            if (cl != NULL || PyTuple_GET_SIZE(e) < 2)
                goto decline_e;
            cl = Py_NewRef(PyTuple_GET_ITEM(e, 1));
            break;
        case K_CLOSE:
            keep = 0;
            break;
        case K_CHUNKED:
            if (chunked)
                goto decline_e;
            chunked = 1;
            break;
        case K_GRPC:
            if (PyTuple_GET_SIZE(e) < 3)
                goto decline_e;
            if (grpc == NULL)
                grpc = Py_NewRef(PyTuple_GET_ITEM(e, 1));
            if (PyList_Append(out, PyTuple_GET_ITEM(e, 2)) < 0) {
                Py_DECREF(e);
                goto error;
            }
            break;
        default: /* _ODD */
            goto decline_e;
        }
        Py_DECREF(e);
        continue;
    decline_e:
        Py_DECREF(e);
        goto decline;
    }
    if (chunked && cl != NULL)
        goto decline;
    res = Py_BuildValue("(OOOOO)", out, cl ? cl : Py_None, chunked ? Py_True : Py_False,
                        keep ? Py_True : Py_False, grpc ? grpc : Py_None);
    goto finish;
decline:
    res = Py_NewRef(Py_None);
    goto finish;
error:
    res = NULL;
finish:
    Py_DECREF(out);
    Py_XDECREF(cl);
    Py_XDECREF(grpc);
    return res;
}

/* plain_request(method, target, lines, inbound, peer_ip, underscores_ok, available, scheme=b"http",
   extra=b"") -> (head bytes, request id, authority, body length, keep-alive) or None */
static PyObject *
fast_plain_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 7 || nargs > 9) {
        PyErr_SetString(PyExc_TypeError, "plain_request(method, target, lines, inbound, peer_ip, "
                                         "underscores_ok, available, scheme, extra)");
        return NULL;
    }
    if (!ready(X_req_memo, "express_setup"))
        return NULL;
    PyObject *method = args[0], *target = args[1], *lines = args[2], *peer_ip = args[4];
    static PyObject *default_scheme, *default_extra;
    if (default_scheme == NULL && ((default_scheme = PyBytes_FromString("http")) == NULL
                                   || (default_extra = PyBytes_FromString("")) == NULL))
        return NULL;
    PyObject *scheme = nargs > 7 ? args[7] : default_scheme, *extra = nargs > 8 ? args[8] : default_extra;
    if (!all_bytes(lines) || !PyBytes_CheckExact(method) || !PyBytes_CheckExact(target)
        || !PyBytes_CheckExact(peer_ip) || !PyBytes_CheckExact(scheme) || !PyBytes_CheckExact(extra))
        return PyObject_Vectorcall(X_request_py, args, (size_t)nargs, NULL);
    int inbound = PyObject_IsTrue(args[3]), underscores_ok = PyObject_IsTrue(args[5]);
    long long available = PyLong_AsLongLong(args[6]);
    if (available == -1 && PyErr_Occurred())
        return NULL;
    PyObject *out = PyList_New(0), *host = NULL, *cl = NULL, *rid = NULL, *res = NULL;
    int keep = 1, xfp = 0;
    if (out == NULL)
        return NULL;
    {
        Py_ssize_t ml = PyBytes_GET_SIZE(method), tl = PyBytes_GET_SIZE(target);
        PyObject *first = PyBytes_FromStringAndSize(NULL, ml + 1 + tl + 11);
        if (first == NULL)
            goto error;
        char *p = PyBytes_AS_STRING(first);
        memcpy(p, PyBytes_AS_STRING(method), (size_t)ml);
        p[ml] = ' ';
        memcpy(p + ml + 1, PyBytes_AS_STRING(target), (size_t)tl);
        memcpy(p + ml + 1 + tl, " HTTP/1.1\r\n", 11);
        if (append_new(out, first) < 0)
            goto error;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(lines); i++) {
        PyObject *e = classify(X_req_memo, X_request_line, PyList_GET_ITEM(lines, i), 0);
        if (e == NULL)
            goto error;
        if (e == Py_None)
            goto decline_e;
        if (PyBytes_CheckExact(e)) {
            if (append_new(out, e) < 0)
                goto error;
            continue;
        }
        PyObject *add = NULL; /* borrowed from e: what to forward */
        long kind = kind_of(e, 1);
        if (kind != K_CLOSE && PyTuple_GET_SIZE(e) < 2)
            goto decline_e;
        switch (kind) {
        case K_HOST:
            if (host != NULL || PyTuple_GET_SIZE(e) < 3)
                goto decline_e;
            host = Py_NewRef(PyTuple_GET_ITEM(e, 1));
            add = PyTuple_GET_ITEM(e, 2);
            break;
        case K_CL:
            if (cl != NULL)
                goto decline_e;
            cl = Py_NewRef(PyTuple_GET_ITEM(e, 1));
            break;
        case K_CLOSE:
            keep = 0;
            break;
        case K_RID: {
            if (PyTuple_GET_SIZE(e) < 3)
                goto decline_e;
            PyObject *v = PyTuple_GET_ITEM(e, 1);
            if (rid == NULL && PyObject_IsTrue(v)) {
                rid = Py_NewRef(v);
                add = PyTuple_GET_ITEM(e, 2);
            }
            break;
        }
        case K_XFF:
            if (inbound)
                goto decline_e;
            add = PyTuple_GET_ITEM(e, 1);
            break;
        case K_XFP:
            if (!inbound) {
                xfp = 1;
                add = PyTuple_GET_ITEM(e, 1);
            }
            break;
        case K_UNDER:
            if (!underscores_ok)
                goto decline_e;
            add = PyTuple_GET_ITEM(e, 1);
            break;
        default: /* _ODD, or anything else */
            goto decline_e;
        }
        if (add != NULL && PyList_Append(out, add) < 0) {
            Py_DECREF(e);
            goto error;
        }
        Py_DECREF(e);
        continue;
    decline_e:
        Py_DECREF(e);
        goto decline;
    }
    if (host == NULL)
        goto decline;
    long long n = 0;
    if (cl != NULL) {
        n = PyLong_AsLongLong(cl);
        if (n == -1 && PyErr_Occurred())
            goto error;
    }
    if (n != available)
        goto decline;
    if (rid == NULL) {
        rid = PyObject_CallNoArgs(X_new_rid);
        if (rid == NULL)
            goto error;
        if (!PyBytes_CheckExact(rid)) {
            PyErr_SetString(PyExc_TypeError, "new_request_id() must return bytes");
            goto error;
        }
        if (append_new(out, cat3("x-request-id: ", rid, "\r\n")) < 0)
            goto error;
    }
    if (inbound && append_new(out, cat3("x-forwarded-for: ", peer_ip, "\r\n")) < 0)
        goto error;
    if (!xfp && append_new(out, cat3("x-forwarded-proto: ", scheme, "\r\n")) < 0)
        goto error;
    if (PyBytes_GET_SIZE(extra) && PyList_Append(out, extra) < 0)
        goto error;
    if (cl != NULL) {
        if (append_new(out, PyBytes_FromFormat("content-length: %zd\r\n\r\n", (Py_ssize_t)n)) < 0)
            goto error;
    } else if (EQ(method, "POST") || EQ(method, "PUT") || EQ(method, "PATCH")) {
        if (append_new(out, PyBytes_FromString("content-length: 0\r\n\r\n")) < 0)
            goto error;
    } else if (append_new(out, PyBytes_FromString("\r\n")) < 0) {
        goto error;
    }
    {
        PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
        PyObject *joined = empty ? _PyBytes_Join(empty, out) : NULL;
        Py_XDECREF(empty);
        if (joined == NULL)
            goto error;
        res = Py_BuildValue("(NOOLO)", joined, rid, host, n, keep ? Py_True : Py_False);
    }
    goto finish;
decline:
    res = Py_NewRef(Py_None);
    goto finish;
error:
    res = NULL;
finish:
    Py_DECREF(out);
    Py_XDECREF(host);
    Py_XDECREF(cl);
    Py_XDECREF(rid);
    return res;
}

/* === request metrics (observe/requests.py's Series) ==========================
 *
 * One label set's counter and three histograms, as the Python ``Series``, which
 * stays the reference (tests/unit/observe/test_series_native.py compares them).
 * ``series_setup`` hands over the bucket bounds once, so they are written in one
 * place (observe/requests.py). A bucket is chosen as ``bisect_left`` does: the
 * first bound not below the value (a NaN duration falls in the first). */

#define MAX_BOUNDS 32
static double dur_bounds[MAX_BOUNDS], size_bounds[MAX_BOUNDS];
static Py_ssize_t n_dur = -1, n_size = -1;

typedef struct {
    PyObject_HEAD
    long long count;
    double dur_sum;
    long long req_sum, resp_sum;
    long long dur[MAX_BOUNDS + 1], req[MAX_BOUNDS + 1], resp[MAX_BOUNDS + 1];
} Series;

/* series_setup(duration_bounds, size_bounds) */
static PyObject *
fast_series_setup(PyObject *module, PyObject *args)
{
    PyObject *d, *s;
    if (!PyArg_ParseTuple(args, "OO:series_setup", &d, &s))
        return NULL;
    double *into[2] = {dur_bounds, size_bounds};
    Py_ssize_t *count[2] = {&n_dur, &n_size};
    PyObject *given[2] = {d, s};
    for (int k = 0; k < 2; k++) {
        PyObject *seq = PySequence_Fast(given[k], "series_setup: bounds must be a sequence");
        if (seq == NULL)
            return NULL;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        if (n > MAX_BOUNDS) {
            Py_DECREF(seq);
            return PyErr_Format(PyExc_ValueError, "series_setup: at most %d bounds", MAX_BOUNDS);
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            double v = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
            if (v == -1.0 && PyErr_Occurred()) {
                Py_DECREF(seq);
                return NULL;
            }
            into[k][i] = v;
        }
        *count[k] = n;
        Py_DECREF(seq);
    }
    Py_RETURN_NONE;
}

static PyObject *
Series_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (n_dur < 0) {
        PyErr_SetString(PyExc_RuntimeError, "_ngfast.series_setup() has not been called");
        return NULL;
    }
    if (PyTuple_GET_SIZE(args) || (kwds && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "Series() takes no arguments");
        return NULL;
    }
    return type->tp_alloc(type, 0); /* zeroed */
}

static Py_ssize_t
bucket(const double *bounds, Py_ssize_t n, double x)
{
    Py_ssize_t lo = 0, hi = n;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (bounds[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* observe(duration_ms, request_bytes, response_bytes) */
static PyObject *
Series_observe(Series *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "observe(duration_ms, request_bytes, response_bytes)");
        return NULL;
    }
    double d = PyFloat_AsDouble(args[0]);
    if (d == -1.0 && PyErr_Occurred())
        return NULL;
    long long rq = PyLong_AsLongLong(args[1]);
    if (rq == -1 && PyErr_Occurred())
        return NULL;
    long long rs = PyLong_AsLongLong(args[2]);
    if (rs == -1 && PyErr_Occurred())
        return NULL;
    self->count++;
    self->dur[bucket(dur_bounds, n_dur, d)]++;
    self->dur_sum += d;
    self->req[bucket(size_bounds, n_size, (double)rq)]++;
    self->req_sum += rq;
    self->resp[bucket(size_bounds, n_size, (double)rs)]++;
    self->resp_sum += rs;
    Py_RETURN_NONE;
}

static PyObject *
counts(const long long *c, Py_ssize_t n)
{
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyLong_FromLongLong(c[i]);
        if (v == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, v);
    }
    return out;
}

static PyObject *Series_dur(Series *self, void *c) { return counts(self->dur, n_dur + 1); }
static PyObject *Series_req(Series *self, void *c) { return counts(self->req, n_size + 1); }
static PyObject *Series_resp(Series *self, void *c) { return counts(self->resp, n_size + 1); }

static PyGetSetDef Series_getset[] = {
    {"dur", (getter)Series_dur, NULL, "duration bucket counts (one per bound, then +Inf)", NULL},
    {"req", (getter)Series_req, NULL, "request size bucket counts", NULL},
    {"resp", (getter)Series_resp, NULL, "response size bucket counts", NULL},
    {NULL}};

static PyMemberDef Series_members[] = {
    {"count", T_LONGLONG, offsetof(Series, count), READONLY, "requests observed"},
    {"dur_sum", T_DOUBLE, offsetof(Series, dur_sum), READONLY, "their durations' sum (ms)"},
    {"req_sum", T_LONGLONG, offsetof(Series, req_sum), READONLY, "their request sizes' sum"},
    {"resp_sum", T_LONGLONG, offsetof(Series, resp_sum), READONLY, "their response sizes' sum"},
    {NULL}};

static PyMethodDef Series_methods[] = {
    {"observe", (PyCFunction)(void (*)(void))Series_observe, METH_FASTCALL,
     "observe(duration_ms, request_bytes, response_bytes): one finished request"},
    {NULL}};

static PyTypeObject SeriesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "meshproxy.codec._ngfast.Series",
    .tp_doc = PyDoc_STR("Series(): observe/requests.Series in C (one label set's counter and histograms)"),
    .tp_basicsize = sizeof(Series),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Series_new,
    .tp_methods = Series_methods,
    .tp_members = Series_members,
    .tp_getset = Series_getset,
};

static PyMethodDef fast_methods[] = {
    {"recv", (PyCFunction)(void (*)(void))fast_recv, METH_FASTCALL,
     "recv(session, data, collector) -> int: nghttp2_session_mem_recv with the GIL held."},
    {"send", (PyCFunction)(void (*)(void))fast_send, METH_FASTCALL,
     "send(session, collector) -> (bytes, rv): nghttp2_session_mem_send until it has nothing more."},
    {"submit_request", (PyCFunction)(void (*)(void))fast_submit_request, METH_FASTCALL,
     "submit_request(session, fields, body) -> stream id or a negative nghttp2 error"},
    {"submit_response", (PyCFunction)(void (*)(void))fast_submit_response, METH_FASTCALL,
     "submit_response(session, stream_id, fields, end) -> int (end: 0 head only, 1 ends the stream, 2 body queued)"},
    {"submit_whole", (PyCFunction)(void (*)(void))fast_submit_whole, METH_FASTCALL,
     "submit_whole(session, stream_id, fields, body, collector) -> bool: a response and its whole body, "
     "sent from collector.bodies, when the peer's windows take it now"},
    {"bind_extra", fast_bind_extra, METH_VARARGS,
     "bind_extra(stream_remote_window_size, remote_window_size, consume, want_read, submit_data, "
     "resume_data): function addresses"},
    {"consume", (PyCFunction)(void (*)(void))fast_consume, METH_FASTCALL,
     "consume(session, stream_id, n) -> int: nghttp2_session_consume"},
    {"want_read", fast_want_read, METH_O, "want_read(session) -> bool: nghttp2_session_want_read"},
    {"submit_data", (PyCFunction)(void (*)(void))fast_submit_data, METH_FASTCALL,
     "submit_data(session, stream_id) -> int: nghttp2_submit_data (END_STREAM, our provider)"},
    {"resume_data", (PyCFunction)(void (*)(void))fast_resume_data, METH_FASTCALL,
     "resume_data(session, stream_id) -> int: nghttp2_session_resume_data"},
    {"bind", fast_bind, METH_VARARGS,
     "bind(mem_recv, mem_send, submit_request, submit_response, submit_headers, provider, layout)"},
    {"callbacks", fast_callbacks, METH_NOARGS, "callbacks() -> {name: address}"},
    {"headers_setup", fast_headers_setup, METH_VARARGS,
     "headers_setup(RequestHead, ResponseHead, NeverIndexedHeaderTuple, lift_request_py, lift_response_py, clean_py)"},
    {"lift_request", (PyCFunction)(void (*)(void))fast_lift_request, METH_FASTCALL,
     "lift_request(stream_id, fields, end_stream, max_size, max_count, size=None): _h2_headers.lift_request"},
    {"lift_response", (PyCFunction)(void (*)(void))fast_lift_response, METH_FASTCALL,
     "lift_response(stream_id, fields, end_stream, max_size, max_count, checked=False, size=None)"},
    {"clean", (PyCFunction)(void (*)(void))fast_clean, METH_FASTCALL,
     "clean(headers, out, drop_host) -> host: _h2_headers._clean"},
    {"hygiene_setup", fast_hygiene_setup, METH_VARARGS,
     "hygiene_setup(clean_request_py, clean_response_py, getrandbits)"},
    {"new_request_id", fast_new_request_id, METH_NOARGS, "new_request_id() -> bytes: headers.new_request_id"},
    {"clean_request", (PyCFunction)(void (*)(void))fast_clean_request, METH_FASTCALL,
     "clean_request(head, inbound, peer_ip, scheme, request_id) -> x-request-id: headers._clean_request_py"},
    {"clean_response", (PyCFunction)(void (*)(void))fast_clean_response, METH_FASTCALL,
     "clean_response(head, local) -> None: headers._clean_response_py"},
    {"series_setup", fast_series_setup, METH_VARARGS, "series_setup(duration_bounds, size_bounds)"},
    {"express_setup", fast_express_setup, METH_VARARGS,
     "express_setup(request_memo, response_memo, request_line, response_line, new_request_id, "
     "plain_request_py, plain_response_py)"},
    {"plain_request", (PyCFunction)(void (*)(void))fast_plain_request, METH_FASTCALL,
     "plain_request(method, target, lines, inbound, peer_ip, underscores_ok, available, scheme, extra)"},
    {"plain_response", (PyCFunction)(void (*)(void))fast_plain_response, METH_FASTCALL,
     "plain_response(lines, known_only=False) -> (lines, cl, chunked, keep, grpc) or None"},
    {NULL}};

static struct PyModuleDef fast_module = {
    PyModuleDef_HEAD_INIT, "_ngfast",
    "Native helpers of the nghttp2 HTTP/2 codec (see _ngfast.c and _ng_wire.py).", -1, fast_methods,
    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC
PyInit__ngfast(void)
{
    if (PyType_Ready(&CollectorType) < 0 || PyType_Ready(&SeriesType) < 0)
        return NULL;
    {
        const char *tok = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz";
        for (const char *t = tok; *t; t++)
            token_lower[(unsigned char)*t] = 1;
    }
    PyObject *m = PyModule_Create(&fast_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CollectorType);
    if (PyModule_AddObject(m, "Collector", (PyObject *)&CollectorType) < 0) {
        Py_DECREF(&CollectorType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&SeriesType);
    if (PyModule_AddObject(m, "Series", (PyObject *)&SeriesType) < 0) {
        Py_DECREF(&SeriesType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
