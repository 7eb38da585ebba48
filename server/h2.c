// h2.c: the nghttp2 server session of one connection. nghttp2 is an I/O-free
// state machine: conn.c feeds it bytes and drains its output; these callbacks
// turn HTTP/2 events into gRPC call events (call.c). Errors are graded as in
// nghttp2: a bad request resets or answers its own stream, only a broken
// connection takes the connection down.
#include <string.h>

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

int vk__h2_session_new(vk_conn_t *c) {
  vk_server_t *s = c->server;
  if (nghttp2_session_server_new2(&c->h2, s->h2_callbacks, c, s->h2_option) !=
      0) {
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
