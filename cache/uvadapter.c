// uvadapter.c: see uvadapter.h.
#include "uvadapter.h"

#include <stdlib.h>
#include <sys/ioctl.h>

#include "common.h"

// io_t watches one hiredis connection's socket. It belongs to the
// redisAsyncContext (ev.data) and outlives it until its poll handle closes.
typedef struct {
  uv_poll_t poll;         // poll.data == this
  redisAsyncContext *ac;  // NULL once hiredis has called io_cleanup
  int events;             // UV_READABLE | UV_WRITABLE wanted by hiredis
} io_t;

// hiredis reads at most 16 KiB per call. One call per loop iteration falls
// behind a burst of replies (19,000 vehicles connecting at once) when the
// iterations are long, until commands time out with their replies sitting
// in the socket. So read on while the socket holds more, up to a bound that
// leaves the loop's other work its turn.
enum { kMaxReadsPerEvent = 64 };

static void read_replies(io_t *io) {
  for (int i = 0; i < kMaxReadsPerEvent && io->ac != NULL; i++) {
    redisAsyncHandleRead(io->ac);  // may free the context: io->ac = NULL
    int waiting = 0;
    if (io->ac == NULL || ioctl(io->ac->c.fd, FIONREAD, &waiting) != 0 ||
        waiting <= 0) {
      return;
    }
  }
}

static void io_on_poll(uv_poll_t *h, int status, int events) {
  io_t *io = h->data;
  // On an error libuv has stopped the watcher; replay what hiredis waits
  // for so that its read or write fails and it tears the context down.
  int ev = status < 0 ? io->events : events;
  // Either call may free the context (io_cleanup clears io->ac); `io`
  // itself lives until its close callback.
  if (io->ac != NULL && (ev & UV_READABLE)) {
    read_replies(io);
  }
  if (io->ac != NULL && (ev & UV_WRITABLE)) {
    redisAsyncHandleWrite(io->ac);
  }
}

static void io_set(io_t *io, int events) {
  io->events = events;
  if (events != 0) {
    uv_poll_start(&io->poll, events, io_on_poll);
  } else {
    uv_poll_stop(&io->poll);
  }
}

static void io_add_read(void *arg) {
  io_t *io = arg;
  io_set(io, io->events | UV_READABLE);
}

static void io_del_read(void *arg) {
  io_t *io = arg;
  io_set(io, io->events & ~UV_READABLE);
}

static void io_add_write(void *arg) {
  io_t *io = arg;
  io_set(io, io->events | UV_WRITABLE);
}

static void io_del_write(void *arg) {
  io_t *io = arg;
  io_set(io, io->events & ~UV_WRITABLE);
}

static void io_on_closed(uv_handle_t *h) {
  free(h->data);
}

// io_cleanup is hiredis freeing the context (it closes the fd right after;
// uv_close has already stopped watching it by then).
static void io_cleanup(void *arg) {
  io_t *io = arg;
  io->ac = NULL;
  uv_close((uv_handle_t *)&io->poll, io_on_closed);
}

int vk_redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop) {
  io_t *io = calloc(1, sizeof(*io));
  if (io == NULL) {
    return VK_ENOMEM;
  }
  // On failure uv_poll_init has not registered the handle: free is safe.
  if (uv_poll_init(loop, &io->poll, ac->c.fd) != 0) {
    free(io);
    return VK_EIO;
  }
  io->poll.data = io;
  io->ac = ac;
  ac->ev.data = io;
  ac->ev.addRead = io_add_read;
  ac->ev.delRead = io_del_read;
  ac->ev.addWrite = io_add_write;
  ac->ev.delWrite = io_del_write;
  ac->ev.cleanup = io_cleanup;
  return VK_OK;
}
