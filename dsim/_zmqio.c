/* dsim._zmqio: the small-message path's ZeroMQ calls, compiled (see dsim/native.py).
 *
 * A hub drains its ROUTER and sends on its DEALERs through pyzmq's Python-level API otherwise, where each
 * message costs a ZMQ_EVENTS query (a syscall in libzmq, and a SocketOption enum built in Python) and the
 * Python wrappers of three calls. Here a drain receives every queued message's identity and header
 * frames until libzmq says EAGAIN, which it says without an exception, and a send copies the hop and the
 * header into one ZeroMQ message. Nothing else is done in C: what the frames mean stays in Python.
 *
 * libzmq is not linked: the functions are those of the libzmq that pyzmq loaded, whose addresses
 * dsim.native hands to bind(), so sockets that pyzmq made are driven by the same library.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    unsigned char _[64];
} __attribute__((aligned(sizeof(void *)))) zmq_msg_t; /* libzmq >= 4.1 */

#define ZMQ_DONTWAIT 1
#define ZMQ_SNDMORE 2

static int (*msg_init)(zmq_msg_t *);
static int (*msg_init_size)(zmq_msg_t *, size_t);
static int (*msg_recv)(zmq_msg_t *, void *, int);
static int (*msg_send)(zmq_msg_t *, void *, int);
static void *(*msg_data)(zmq_msg_t *);
static size_t (*msg_size)(const zmq_msg_t *);
static int (*msg_more)(const zmq_msg_t *);
static int (*msg_close)(zmq_msg_t *);
static int (*zmq_errno_fn)(void);
static PyObject *error_class; /* zmq.ZMQError: built from an errno, as pyzmq raises it */

static PyObject *fail(int err) {
    PyObject *code = PyLong_FromLong(err);
    if (code != NULL) {
        PyErr_SetObject(error_class, code);
        Py_DECREF(code);
    }
    return NULL;
}

static PyObject *bind(PyObject *self, PyObject *args) {
    unsigned long long a[9];
    PyObject *error;
    if (!PyArg_ParseTuple(args, "(KKKKKKKKK)O", &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &a[6], &a[7], &a[8],
                          &error))
        return NULL;
    msg_init = (int (*)(zmq_msg_t *))(uintptr_t)a[0];
    msg_init_size = (int (*)(zmq_msg_t *, size_t))(uintptr_t)a[1];
    msg_recv = (int (*)(zmq_msg_t *, void *, int))(uintptr_t)a[2];
    msg_send = (int (*)(zmq_msg_t *, void *, int))(uintptr_t)a[3];
    msg_data = (void *(*)(zmq_msg_t *))(uintptr_t)a[4];
    msg_size = (size_t(*)(const zmq_msg_t *))(uintptr_t)a[5];
    msg_more = (int (*)(const zmq_msg_t *))(uintptr_t)a[6];
    msg_close = (int (*)(zmq_msg_t *))(uintptr_t)a[7];
    zmq_errno_fn = (int (*)(void))(uintptr_t)a[8];
    Py_XINCREF(error);
    Py_XSETREF(error_class, error);
    Py_RETURN_NONE;
}

/* One frame as bytes; NULL with *err set to libzmq's errno (0 when Python's error is set). */
static PyObject *recv_frame(void *sock, int *more, int *err) {
    zmq_msg_t msg;
    PyObject *data;
    msg_init(&msg);
    if (msg_recv(&msg, sock, ZMQ_DONTWAIT) < 0) {
        *err = zmq_errno_fn();
        msg_close(&msg);
        return NULL;
    }
    data = PyBytes_FromStringAndSize((const char *)msg_data(&msg), (Py_ssize_t)msg_size(&msg));
    *more = msg_more(&msg);
    msg_close(&msg);
    if (data == NULL)
        *err = 0;
    return data;
}

/* drain(router handle, limit) -> ([(identity, header, more), ...], drained)
 * Up to `limit` messages, stopping after one with more frames behind its header (the caller receives
 * those zero-copy); drained: libzmq said EAGAIN, so the socket's FD will signal the next arrival. */
static PyObject *drain(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    void *sock;
    long limit;
    int drained = 0;
    PyObject *out, *result;
    if (nargs != 2)
        return PyErr_Format(PyExc_TypeError, "drain(handle, limit)");
    sock = PyLong_AsVoidPtr(args[0]);
    limit = PyLong_AsLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (long i = 0; i < limit; i++) {
        int more = 0, err = 0;
        PyObject *identity, *header, *item;
        identity = recv_frame(sock, &more, &err);
        if (identity == NULL) {
            if (err == EAGAIN) {
                drained = 1;
                break;
            }
            Py_DECREF(out);
            return err ? fail(err) : NULL;
        }
        /* A ROUTER hands the identity and then at least one frame, all of a message at once. */
        header = recv_frame(sock, &more, &err);
        if (header == NULL) {
            Py_DECREF(identity);
            Py_DECREF(out);
            return err ? fail(err) : NULL;
        }
        item = PyTuple_New(3);
        if (item == NULL) {
            Py_DECREF(identity);
            Py_DECREF(header);
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(item, 0, identity);
        PyTuple_SET_ITEM(item, 1, header);
        PyTuple_SET_ITEM(item, 2, PyBool_FromLong(more));
        if (PyList_Append(out, item) < 0) {
            Py_DECREF(item);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
        if (more)
            break;
    }
    result = PyTuple_Pack(2, out, drained ? Py_True : Py_False);
    Py_DECREF(out);
    return result;
}

/* send(dealer handle, hop, header, more) -> queued
 * The hop and the header as one frame, without waiting; False when the socket would block (nothing is
 * queued then). With `more`, the caller sends the message's other frames next. */
static PyObject *send(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    void *sock;
    Py_buffer hop, header;
    zmq_msg_t msg;
    int more, err;
    if (nargs != 4)
        return PyErr_Format(PyExc_TypeError, "send(handle, hop, header, more)");
    sock = PyLong_AsVoidPtr(args[0]);
    more = PyObject_IsTrue(args[3]);
    if (PyErr_Occurred())
        return NULL;
    if (PyObject_GetBuffer(args[1], &hop, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[2], &header, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&hop);
        return NULL;
    }
    if (msg_init_size(&msg, (size_t)(hop.len + header.len)) < 0) {
        err = zmq_errno_fn();
        PyBuffer_Release(&hop);
        PyBuffer_Release(&header);
        return fail(err);
    }
    memcpy(msg_data(&msg), hop.buf, (size_t)hop.len);
    memcpy((char *)msg_data(&msg) + hop.len, header.buf, (size_t)header.len);
    PyBuffer_Release(&hop);
    PyBuffer_Release(&header);
    if (msg_send(&msg, sock, ZMQ_DONTWAIT | (more ? ZMQ_SNDMORE : 0)) < 0) {
        err = zmq_errno_fn();
        msg_close(&msg);
        if (err == EAGAIN)
            Py_RETURN_FALSE;
        return fail(err);
    }
    Py_RETURN_TRUE;
}

static PyMethodDef methods[] = {
    {"bind", bind, METH_VARARGS, "bind(addresses of the libzmq functions, ZMQError)"},
    {"drain", (PyCFunction)(void (*)(void))drain, METH_FASTCALL, "drain(handle, limit) -> (messages, drained)"},
    {"send", (PyCFunction)(void (*)(void))send, METH_FASTCALL, "send(handle, hop, header, more) -> queued"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "dsim._zmqio", NULL, -1, methods};

PyMODINIT_FUNC PyInit__zmqio(void) { return PyModule_Create(&module); }
