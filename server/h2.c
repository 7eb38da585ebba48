// h2.c: the nghttp2 server session of one connection. nghttp2 is an I/O-free
// state machine: conn.c feeds it bytes and drains its output; these callbacks
// turn HTTP/2 events into gRPC call events (call.c). Errors are graded as in
// nghttp2: a bad request resets or answers its own stream, only a broken
// connection takes the connection down.
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"
#include "log.h"

static vk_call_t *stream_call(nghttp2_session *h2, int32_t stream_id) {
  return nghttp2_session_get_stream_user_data(h2, stream_id);
}

static int on_begin_headers(nghttp2_session *h2, const nghttp2_frame *frame,
                            void *user_data) {
  vk_conn_t *c = user_data;
  if (frame->hd.type != NGHTTP2_HEADERS ||
      frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
    return 0;
  }
  vk_call_t *call = vk__call_new(c, frame->hd.stream_id);
  if (call == NULL) {
    // Out of memory for this one stream: nghttp2 resets it and the
    // connection goes on.
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  nghttp2_session_set_stream_user_data(h2, frame->hd.stream_id, call);
  vk__conn_stream_opened(c);
  return 0;
}

static int on_header(nghttp2_session *h2, const nghttp2_frame *frame,
                     const uint8_t *name, size_t name_len, const uint8_t *value,
                     size_t value_len, uint8_t flags, void *user_data) {
  (void)flags;
  (void)user_data;
  if (frame->hd.type != NGHTTP2_HEADERS) {
    return 0;
  }
  vk_call_t *call = stream_call(h2, frame->hd.stream_id);
  if (call == NULL) {
    return 0;
  }
  if (frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
    // Request trailers carry nothing gRPC uses; ignore them.
    return 0;
  }
  vk__call_on_header(call, name, name_len, value, value_len);
  return 0;
}

static int on_frame_recv(nghttp2_session *h2, const nghttp2_frame *frame,
                         void *user_data) {
  (void)user_data;
  vk_call_t *call;
  switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
      call = stream_call(h2, frame->hd.stream_id);
      if (call == NULL) {
        return 0;
      }
      if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        vk__call_on_headers_end(call);
      }
      if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) {
        vk__call_on_end_stream(call);
      }
      return 0;
    case NGHTTP2_DATA:
      if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) {
        call = stream_call(h2, frame->hd.stream_id);
        if (call != NULL) {
          vk__call_on_end_stream(call);
        }
      }
      return 0;
    default:
      return 0;
  }
}

static int on_data_chunk_recv(nghttp2_session *h2, uint8_t flags,
                              int32_t stream_id, const uint8_t *data,
                              size_t len, void *user_data) {
  (void)flags;
  (void)user_data;
  vk_call_t *call = stream_call(h2, stream_id);
  if (call != NULL) {
    vk__call_on_data(call, data, len);
  }
  return 0;
}

static int on_stream_close(nghttp2_session *h2, int32_t stream_id,
                           uint32_t error_code, void *user_data) {
  (void)error_code;
  vk_conn_t *c = user_data;
  vk_call_t *call = stream_call(h2, stream_id);
  if (call != NULL) {
    nghttp2_session_set_stream_user_data(h2, stream_id, NULL);
    vk__call_on_stream_close(call);
    vk__conn_stream_closed(c);
  }
  return 0;
}

// The response is complete (HEADERS with END_STREAM: Trailers-Only or
// trailers). If the client is still sending, RFC 9113 §8.1 lets the server
// reset the stream with NO_ERROR so the client stops. This must wait until
// the frame is out: a reset submitted earlier marks the stream closing and
// nghttp2 drops the queued HEADERS, leaving the client with no status.
static int on_frame_send(nghttp2_session *h2, const nghttp2_frame *frame,
                         void *user_data) {
  (void)user_data;
  if (frame->hd.type != NGHTTP2_HEADERS ||
      !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
    return 0;
  }
  vk_call_t *call = stream_call(h2, frame->hd.stream_id);
  if (call != NULL && !call->half_closed) {
    nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                              NGHTTP2_NO_ERROR);
  }
  return 0;
}

static int on_invalid_frame_recv(nghttp2_session *h2,
                                 const nghttp2_frame *frame, int lib_error,
                                 void *user_data) {
  (void)h2;
  vk_conn_t *c = user_data;
  VK_DEBUG("h2 %s: invalid frame type %u on stream %d: %s", c->peer,
           frame->hd.type, frame->hd.stream_id, nghttp2_strerror(lib_error));
  return 0;
}

int vk__h2_callbacks_new(nghttp2_session_callbacks **out) {
  nghttp2_session_callbacks *cbs;
  if (nghttp2_session_callbacks_new(&cbs) != 0) {
    return VK_ENOMEM;
  }
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs,
                                                          on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs,
                                                            on_data_chunk_recv);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
  nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(
      cbs, on_invalid_frame_recv);
  *out = cbs;
  return VK_OK;
}

// --- nghttp2's memory -------------------------------------------------------
//
// nghttp2 1.52 allocates a 16 KiB output frame buffer per session when the
// session is created (NGHTTP2_FRAMEBUF_CHUNKLEN) and keeps it for the
// session's life, although it holds bytes only while
// nghttp2_session_mem_send packs a frame: conn.c copies each frame out at
// once, and when nghttp2 has nothing left to send (want_write is 0: no frame
// in progress, none queued) nothing in the buffer is ever read again before
// being written. On an idle connection (a vehicle's channel) that buffer is
// the largest thing we hold, and it is resident wherever a frame touched it.
//
// So the session gets an allocator whose user data is the connection: the
// one large block nghttp2 allocates while the session is created goes on
// pages of its own, and once a connection has sent nothing for
// VK_H2_FRAMEBUF_QUIET_MS those pages go back to the kernel (MADV_DONTNEED:
// they read as zeros and cost nothing until the next frame is packed into
// them). Every other allocation is plain malloc. If nghttp2 ever allocated the
// buffer later, or not at all, c->fb stays NULL and this does nothing.

// Blocks at least this large allocated during session creation are the
// frame buffer (the other blocks then are at most 4 KiB).
enum { kFramebufMin = 8192 };

static void *h2_malloc(size_t size, void *user_data) {
  (void)user_data;
  return malloc(size);
}

static void *h2_calloc(size_t n, size_t size, void *user_data) {
  (void)user_data;
  return calloc(n, size);
}

// A page-aligned block for the frame buffer, or plain malloc where pages
// are too large to give any back.
static void *framebuf_alloc(vk_conn_t *c, size_t size) {
  size_t page = c->server->page_size;
  void *p = NULL;
  if (size < page || posix_memalign(&p, page, size) != 0) {
    return malloc(size);
  }
  c->fb = p;
  c->fb_len = size;
  return p;
}

static void *h2_realloc(void *p, size_t size, void *user_data) {
  vk_conn_t *c = user_data;
  if (p == NULL && c->h2_creating && c->fb == NULL && size >= kFramebufMin) {
    return framebuf_alloc(c, size);
  }
  if (p != NULL && p == c->fb) {
    c->fb = NULL;  // moved: no longer ours to release
  }
  return realloc(p, size);
}

static void h2_free(void *p, void *user_data) {
  vk_conn_t *c = user_data;
  if (p != NULL && p == c->fb) {
    c->fb = NULL;
  }
  free(p);
}

bool vk__h2_framebuf_release(vk_conn_t *c) {
  if (c->fb == NULL) {
    return false;
  }
  // Whole pages only: the block starts on a page, and its partial last page
  // is shared with whatever malloc put after it. madvise is advisory: on
  // failure the pages just stay resident.
  size_t len = c->fb_len & ~(c->server->page_size - 1);
  (void)madvise(c->fb, len, MADV_DONTNEED);
  return true;
}

static void framebuf_unlink(vk_conn_t *c) {
  vk_server_t *s = c->server;
  *(c->fb_prev != NULL ? &c->fb_prev->fb_next : &s->fb_head) = c->fb_next;
  *(c->fb_next != NULL ? &c->fb_next->fb_prev : &s->fb_tail) = c->fb_prev;
  c->fb_prev = c->fb_next = NULL;
  c->fb_listed = false;
}

static void framebuf_append(vk_conn_t *c, uint64_t now) {
  vk_server_t *s = c->server;
  c->fb_used_at = now;
  c->fb_listed = true;
  c->fb_next = NULL;
  c->fb_prev = s->fb_tail;
  *(s->fb_tail != NULL ? &s->fb_tail->fb_next : &s->fb_head) = c;
  s->fb_tail = c;
}

static void on_framebuf_sweep(uv_timer_t *t);

// Arms the sweep for when the least recently written connection will have
// been quiet long enough.
static void framebuf_arm(vk_server_t *s, uint64_t now) {
  if (s->fb_head == NULL) {
    return;
  }
  uint64_t due = s->fb_head->fb_used_at + VK_H2_FRAMEBUF_QUIET_MS;
  uv_timer_start(&s->fb_sweep, on_framebuf_sweep, due > now ? due - now : 0, 0);
}

// Releases the frame buffers of connections quiet for the whole period, in
// the order they last wrote. A busy connection is never reached (each flush
// moves it to the tail) and so never pays for this; a connection that goes
// quiet pays one madvise, and one page fault when it next writes. Should
// nghttp2 still hold frames to send (a peer that does not read), the buffer
// may be in use: look again a period later.
static void on_framebuf_sweep(uv_timer_t *t) {
  vk_server_t *s = vk_container_of(t, vk_server_t, fb_sweep);
  uint64_t now = uv_now(s->loop);
  vk_conn_t *c;
  while ((c = s->fb_head) != NULL &&
         now - c->fb_used_at >= VK_H2_FRAMEBUF_QUIET_MS) {
    framebuf_unlink(c);
    if (nghttp2_session_want_write(c->h2)) {
      framebuf_append(c, now);
    } else {
      vk__h2_framebuf_release(c);
    }
  }
  framebuf_arm(s, now);
}

void vk__h2_framebuf_init(vk_server_t *s) {
  long page = sysconf(_SC_PAGESIZE);
  s->page_size = page > 0 ? (size_t)page : 4096;
  uv_timer_init(s->loop, &s->fb_sweep);
  uv_unref((uv_handle_t *)&s->fb_sweep);  // never keeps the loop alive
}

void vk__h2_framebuf_touched(vk_conn_t *c) {
  if (c->fb == NULL) {
    return;
  }
  vk_server_t *s = c->server;
  uint64_t now = uv_now(s->loop);
  if (c->fb_listed) {
    framebuf_unlink(c);
  }
  framebuf_append(c, now);
  // Armed for the head; a head that moved since only makes it fire early.
  if (!uv_is_active((uv_handle_t *)&s->fb_sweep)) {
    framebuf_arm(s, now);
  }
}

void vk__h2_framebuf_forget(vk_conn_t *c) {
  if (c->fb_listed) {
    framebuf_unlink(c);
  }
}

// --- the session -------------------------------------------------------------

int vk__h2_session_new(vk_conn_t *c) {
  vk_server_t *s = c->server;
  // nghttp2 copies `mem` into the session (nghttp2.h: it does not refer to
  // the pointer after the call), so the stack is fine.
  nghttp2_mem mem = {c, h2_malloc, h2_free, h2_calloc, h2_realloc};
  c->h2_creating = true;
  int rv = nghttp2_session_server_new3(&c->h2, s->h2_callbacks, c, s->h2_option,
                                       &mem);
  c->h2_creating = false;
  if (rv != 0) {
    return VK_ENOMEM;
  }
  // Our SETTINGS: the stream cap, the header list cap, and windows large
  // enough that a 4 MiB message does not crawl at 64 KiB per round trip.
  // Inbound memory stays bounded by the per-call message cap, not the window.
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS,
       s->limits.max_concurrent_streams},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, s->limits.max_header_list_size},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1u << 20},
  };
  if (nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, VK_ARRAY_LEN(iv)) !=
          0 ||
      nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0,
                                            16 << 20) != 0) {
    nghttp2_session_del(c->h2);
    c->h2 = NULL;
    return VK_ENOMEM;
  }
  return VK_OK;
}
