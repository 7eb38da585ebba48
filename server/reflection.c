// reflection.c: grpc.reflection.v1{,alpha}.ServerReflection over one
// embedded FileDescriptorSet.
//
// Everything a request can ask for is computed once, in vk_reflection_new:
// each file's serialized FileDescriptorProto is a slice of our copy of the
// set, each file's answer (the file, then its transitive imports, the order
// grpc C++ and grpc-go use) is a prebuilt array of those slices, and the
// list_services answer is prebuilt too. Answering a request is then lookups
// and one vk_call_send, with no allocation except for extension numbers.
//
// v1 and v1alpha: the two protos define the same messages with the same
// field numbers, so their encodings are identical byte for byte. Both
// services are therefore declared with the v1 descriptors: the framework
// decodes a v1alpha request as a v1 one and the v1 response we send is a
// valid v1alpha response. One implementation, no conversions; only the
// service names differ.
#include "reflection.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bytestring.h>

#include "google/protobuf/descriptor.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "log.h"

// Messages nest far less than this in any real .proto; the cap only bounds
// the recursion of index_message.
#define REFL_MAX_DEPTH 100

typedef Google__Protobuf__FileDescriptorSet pb_fds_t;
typedef Google__Protobuf__FileDescriptorProto pb_file_t;
typedef Google__Protobuf__DescriptorProto pb_message_t;
typedef Google__Protobuf__EnumDescriptorProto pb_enum_t;
typedef Google__Protobuf__FieldDescriptorProto pb_field_t;
typedef Grpc__Reflection__V1__ServerReflectionRequest refl_req_t;
typedef Grpc__Reflection__V1__ServerReflectionResponse refl_resp_t;
typedef Grpc__Reflection__V1__ServiceResponse refl_service_msg_t;

typedef enum {
  REFL_SYM_PACKAGE,
  REFL_SYM_MESSAGE,
  REFL_SYM_FIELD,
  REFL_SYM_ONEOF,
  REFL_SYM_EXTENSION,
  REFL_SYM_ENUM,
  REFL_SYM_ENUM_VALUE,
  REFL_SYM_SERVICE,
  REFL_SYM_METHOD,
} refl_sym_kind_t;

typedef struct refl_file_s {
  const char *name;  // in r->set
  CBS bytes;         // the serialized FileDescriptorProto, in r->fds
  // The answer for this file: itself, then its transitive imports.
  ProtobufCBinaryData *closure;
  size_t n_closure;
} refl_file_t;

typedef struct refl_symbol_s {
  char *name;  // fully qualified, without a leading '.'
  size_t file;
  refl_sym_kind_t kind;
} refl_symbol_t;

typedef struct refl_ext_s {
  char *extendee;  // fully qualified, without a leading '.'
  int32_t number;
  size_t file;
} refl_ext_t;

struct vk_reflection_s {
  vk_service_t svc_v1;  // both services' ctx == this
  vk_service_t svc_v1alpha;
  uint8_t *fds;  // our copy of the set's bytes
  pb_fds_t *set;
  refl_file_t *files;
  size_t n_files;
  refl_symbol_t *symbols;  // sorted by name, unique once built
  size_t n_symbols;
  size_t cap_symbols;
  refl_ext_t *exts;
  size_t n_exts;
  size_t cap_exts;
  // The list_services answer.
  refl_service_msg_t *service_msgs;
  refl_service_msg_t **service_ptrs;
  size_t n_services;
  size_t cap_services;
};

// --- splitting the set
// ---------------------------------------------------------

static int cbs_get_varint(CBS *cbs, uint64_t *out) {
  uint64_t v = 0;
  for (unsigned shift = 0; shift < 64; shift += 7) {
    uint8_t b;
    if (!CBS_get_u8(cbs, &b)) {
      return 0;
    }
    v |= (uint64_t)(b & 0x7f) << shift;
    if ((b & 0x80) == 0) {
      *out = v;
      return 1;
    }
  }
  return 0;
}

// fds_split walks the set's wire format and points each file's `bytes` at
// its FileDescriptorProto (field 1), so that clients get exactly what protoc
// wrote rather than a re-encoding. protobuf-c has already parsed the same
// bytes: the walk must find exactly the files it found, in the same order.
static int fds_split(vk_reflection_t *r, size_t fds_len) {
  CBS in;
  CBS_init(&in, r->fds, fds_len);
  size_t i = 0;
  while (CBS_len(&in) > 0) {
    uint64_t tag, len;
    if (!cbs_get_varint(&in, &tag)) {
      return VK_EINVAL;
    }
    switch (tag & 7) {
      case 0:
        if (!cbs_get_varint(&in, &len)) {
          return VK_EINVAL;
        }
        break;
      case 1:
        if (!CBS_skip(&in, 8)) {
          return VK_EINVAL;
        }
        break;
      case 2: {
        CBS field;
        if (!cbs_get_varint(&in, &len) || len > CBS_len(&in) ||
            !CBS_get_bytes(&in, &field, (size_t)len)) {
          return VK_EINVAL;
        }
        if (tag >> 3 == 1) {
          if (i == r->n_files) {
            return VK_EINVAL;
          }
          r->files[i++].bytes = field;
        }
        break;
      }
      case 5:
        if (!CBS_skip(&in, 4)) {
          return VK_EINVAL;
        }
        break;
      default:
        return VK_EINVAL;
    }
  }
  return i == r->n_files ? 0 : VK_EINVAL;
}

static bool file_find(const vk_reflection_t *r, const char *name,
                      size_t *out_index) {
  for (size_t i = 0; i < r->n_files; i++) {
    if (strcmp(r->files[i].name, name) == 0) {
      *out_index = i;
      return true;
    }
  }
  return false;
}

// file_build_closure lists file `f` and every file it imports, directly or
// not, each once, breadth first. `queue` and `seen` are scratch of n_files.
static int file_build_closure(vk_reflection_t *r, size_t f, size_t *queue,
                              bool *seen) {
  memset(seen, 0, r->n_files * sizeof(*seen));
  size_t head = 0, n = 0;
  queue[n++] = f;
  seen[f] = true;
  while (head < n) {
    const pb_file_t *file = r->set->file[queue[head++]];
    for (size_t d = 0; d < file->n_dependency; d++) {
      size_t dep;
      if (file->dependency[d] == NULL ||
          !file_find(r, file->dependency[d], &dep)) {
        VK_ERROR("reflection: %s imports %s, missing from the set", file->name,
                 file->dependency[d] ? file->dependency[d] : "?");
        return VK_EINVAL;
      }
      if (!seen[dep]) {
        seen[dep] = true;
        queue[n++] = dep;
      }
    }
  }
  refl_file_t *rf = &r->files[f];
  rf->closure = calloc(n, sizeof(*rf->closure));
  if (rf->closure == NULL) {
    return VK_ENOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    const CBS *bytes = &r->files[queue[i]].bytes;
    // ProtobufCBinaryData is not const, but it is only ever packed.
    rf->closure[i].data = (uint8_t *)CBS_data(bytes);
    rf->closure[i].len = CBS_len(bytes);
  }
  rf->n_closure = n;
  return 0;
}

static int index_files(vk_reflection_t *r) {
  for (size_t i = 0; i < r->n_files; i++) {
    const char *name = r->set->file[i]->name;
    if (name == NULL) {
      VK_ERROR("reflection: file %zu has no name", i);
      return VK_EINVAL;
    }
    for (size_t j = 0; j < i; j++) {
      if (strcmp(r->files[j].name, name) == 0) {
        VK_ERROR("reflection: %s is in the set twice", name);
        return VK_EINVAL;
      }
    }
    r->files[i].name = name;
  }
  size_t *queue = calloc(r->n_files + 1, sizeof(*queue));
  bool *seen = calloc(r->n_files + 1, sizeof(*seen));
  int rv = queue != NULL && seen != NULL ? 0 : VK_ENOMEM;
  for (size_t i = 0; rv == 0 && i < r->n_files; i++) {
    rv = file_build_closure(r, i, queue, seen);
  }
  free(queue);
  free(seen);
  return rv;
}

// --- symbols
// -----------------------------------------------------------------------

// sym_add adds `scope`.`name` (or `name` when scope is "") as a symbol of
// `file` and sets *out_full, if not NULL, to the table's copy of the name.
static int sym_add(vk_reflection_t *r, refl_sym_kind_t kind, const char *scope,
                   const char *name, size_t file, const char **out_full) {
  if (name == NULL || name[0] == '\0') {
    return VK_EINVAL;
  }
  if (r->n_symbols == r->cap_symbols) {
    size_t cap = r->cap_symbols ? r->cap_symbols * 2 : 256;
    refl_symbol_t *s = realloc(r->symbols, cap * sizeof(*s));
    if (s == NULL) {
      return VK_ENOMEM;
    }
    r->symbols = s;
    r->cap_symbols = cap;
  }
  size_t a = strlen(scope), b = strlen(name);
  char *full = malloc(a + b + 2);
  if (full == NULL) {
    return VK_ENOMEM;
  }
  if (a > 0) {
    memcpy(full, scope, a);
    full[a++] = '.';
  }
  memcpy(full + a, name, b + 1);
  r->symbols[r->n_symbols++] = (refl_symbol_t){full, file, kind};
  if (out_full != NULL) {
    *out_full = full;
  }
  return 0;
}

// ext_add records an extension field `f` declared in `file`.
static int ext_add(vk_reflection_t *r, const pb_field_t *f, size_t file) {
  if (f->extendee == NULL || !f->has_number) {
    return VK_EINVAL;
  }
  if (r->n_exts == r->cap_exts) {
    size_t cap = r->cap_exts ? r->cap_exts * 2 : 16;
    refl_ext_t *e = realloc(r->exts, cap * sizeof(*e));
    if (e == NULL) {
      return VK_ENOMEM;
    }
    r->exts = e;
    r->cap_exts = cap;
  }
  // protoc writes resolved type names with a leading '.'.
  const char *extendee = f->extendee[0] == '.' ? f->extendee + 1 : f->extendee;
  char *copy = strdup(extendee);
  if (copy == NULL) {
    return VK_ENOMEM;
  }
  r->exts[r->n_exts++] = (refl_ext_t){copy, f->number, file};
  return 0;
}

static int index_extensions(vk_reflection_t *r, const char *scope,
                            pb_field_t *const *exts, size_t n, size_t file) {
  for (size_t i = 0; i < n; i++) {
    int rv = sym_add(r, REFL_SYM_EXTENSION, scope, exts[i]->name, file, NULL);
    if (rv == 0) {
      rv = ext_add(r, exts[i], file);
    }
    if (rv != 0) {
      return rv;
    }
  }
  return 0;
}

// index_enum adds an enum and its values. Values are scoped like the enum
// itself (siblings of it), as in C++: pkg.Color and pkg.RED.
static int index_enum(vk_reflection_t *r, const char *scope, const pb_enum_t *e,
                      size_t file) {
  int rv = sym_add(r, REFL_SYM_ENUM, scope, e->name, file, NULL);
  for (size_t i = 0; rv == 0 && i < e->n_value; i++) {
    rv = sym_add(r, REFL_SYM_ENUM_VALUE, scope, e->value[i]->name, file, NULL);
  }
  return rv;
}

static int index_message(vk_reflection_t *r, const char *scope,
                         const pb_message_t *m, size_t file, unsigned depth) {
  if (depth > REFL_MAX_DEPTH) {
    return VK_EINVAL;
  }
  const char *full;
  int rv = sym_add(r, REFL_SYM_MESSAGE, scope, m->name, file, &full);
  for (size_t i = 0; rv == 0 && i < m->n_field; i++) {
    rv = sym_add(r, REFL_SYM_FIELD, full, m->field[i]->name, file, NULL);
  }
  for (size_t i = 0; rv == 0 && i < m->n_oneof_decl; i++) {
    rv = sym_add(r, REFL_SYM_ONEOF, full, m->oneof_decl[i]->name, file, NULL);
  }
  if (rv == 0) {
    rv = index_extensions(r, full, m->extension, m->n_extension, file);
  }
  for (size_t i = 0; rv == 0 && i < m->n_enum_type; i++) {
    rv = index_enum(r, full, m->enum_type[i], file);
  }
  for (size_t i = 0; rv == 0 && i < m->n_nested_type; i++) {
    rv = index_message(r, full, m->nested_type[i], file, depth + 1);
  }
  return rv;
}

// index_package adds "a", "a.b" and "a.b.c" for package "a.b.c".
static int index_package(vk_reflection_t *r, const char *package, size_t file) {
  size_t len = strlen(package);
  char *prefix = strdup(package);
  if (prefix == NULL) {
    return VK_ENOMEM;
  }
  int rv = 0;
  for (size_t i = 1; rv == 0 && i <= len; i++) {
    if (i == len || package[i] == '.') {
      prefix[i] = '\0';
      rv = sym_add(r, REFL_SYM_PACKAGE, "", prefix, file, NULL);
      prefix[i] = package[i];
    }
  }
  free(prefix);
  return rv;
}

static int service_add(vk_reflection_t *r, const char *full) {
  if (r->n_services == r->cap_services) {
    size_t cap = r->cap_services ? r->cap_services * 2 : 8;
    refl_service_msg_t *msgs =
        realloc(r->service_msgs, cap * sizeof(*r->service_msgs));
    if (msgs == NULL) {
      return VK_ENOMEM;
    }
    r->service_msgs = msgs;
    r->cap_services = cap;
  }
  char *copy = strdup(full);
  if (copy == NULL) {
    return VK_ENOMEM;
  }
  refl_service_msg_t *msg = &r->service_msgs[r->n_services++];
  grpc__reflection__v1__service_response__init(msg);
  msg->name = copy;
  return 0;
}

static int index_file(vk_reflection_t *r, size_t f) {
  const pb_file_t *file = r->set->file[f];
  const char *package = file->package != NULL ? file->package : "";
  int rv = package[0] != '\0' ? index_package(r, package, f) : 0;
  for (size_t i = 0; rv == 0 && i < file->n_message_type; i++) {
    rv = index_message(r, package, file->message_type[i], f, 0);
  }
  for (size_t i = 0; rv == 0 && i < file->n_enum_type; i++) {
    rv = index_enum(r, package, file->enum_type[i], f);
  }
  if (rv == 0) {
    rv = index_extensions(r, package, file->extension, file->n_extension, f);
  }
  for (size_t i = 0; rv == 0 && i < file->n_service; i++) {
    const Google__Protobuf__ServiceDescriptorProto *s = file->service[i];
    const char *full;
    rv = sym_add(r, REFL_SYM_SERVICE, package, s->name, f, &full);
    if (rv == 0) {
      rv = service_add(r, full);
    }
    for (size_t m = 0; rv == 0 && m < s->n_method; m++) {
      rv = sym_add(r, REFL_SYM_METHOD, full, s->method[m]->name, f, NULL);
    }
  }
  return rv;
}

static int sym_cmp(const void *a, const void *b) {
  const refl_symbol_t *x = a, *y = b;
  int c = strcmp(x->name, y->name);
  if (c != 0) {
    return c;
  }
  return x->file < y->file ? -1 : x->file > y->file;
}

// sym_sort sorts the table for sym_find's binary search and drops duplicate
// names, keeping the first file's (a package is declared by many files).
static void sym_sort(vk_reflection_t *r) {
  if (r->n_symbols < 2) {
    return;  // and qsort must not see the NULL table of an empty set
  }
  qsort(r->symbols, r->n_symbols, sizeof(*r->symbols), sym_cmp);
  size_t out = 0;
  for (size_t i = 0; i < r->n_symbols; i++) {
    if (out > 0 && strcmp(r->symbols[out - 1].name, r->symbols[i].name) == 0) {
      free(r->symbols[i].name);
      continue;
    }
    r->symbols[out++] = r->symbols[i];
  }
  r->n_symbols = out;
}

static const refl_symbol_t *sym_find(const vk_reflection_t *r,
                                     const char *name) {
  size_t lo = 0, hi = r->n_symbols;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(name, r->symbols[mid].name);
    if (c == 0) {
      return &r->symbols[mid];
    }
    if (c < 0) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return NULL;
}

// --- answering
// ---------------------------------------------------------------------

// name_ok tells whether a name from a request is present and within the cap;
// strnlen never reads past the cap.
static bool name_ok(const char *name) {
  return name != NULL &&
         strnlen(name, VK_REFLECTION_MAX_NAME + 1) <= VK_REFLECTION_MAX_NAME;
}

// refl_lookup resolves one request to the file whose closure answers it, or
// to an error. all_extension_numbers_of_type fills `numbers` instead, with
// `*out_nums` malloc'ed for the caller to free.
static vk_grpc_status_t refl_lookup(
    const vk_reflection_t *r, const refl_req_t *req,
    const refl_file_t **out_file,
    Grpc__Reflection__V1__ExtensionNumberResponse *numbers, int32_t **out_nums,
    const char **out_message) {
  size_t f;
  const refl_symbol_t *sym;
  *out_file = NULL;
  *out_nums = NULL;
  *out_message = NULL;
  switch (req->message_request_case) {
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
      if (!name_ok(req->file_by_filename)) {
        *out_message = "file name too long";
        return VK_GRPC_INVALID_ARGUMENT;
      }
      if (!file_find(r, req->file_by_filename, &f)) {
        *out_message = "file not found";
        return VK_GRPC_NOT_FOUND;
      }
      *out_file = &r->files[f];
      return VK_GRPC_OK;

    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL:
      if (!name_ok(req->file_containing_symbol)) {
        *out_message = "symbol name too long";
        return VK_GRPC_INVALID_ARGUMENT;
      }
      sym = sym_find(r, req->file_containing_symbol);
      if (sym == NULL) {
        *out_message = "symbol not found";
        return VK_GRPC_NOT_FOUND;
      }
      *out_file = &r->files[sym->file];
      return VK_GRPC_OK;

    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION: {
      const Grpc__Reflection__V1__ExtensionRequest *x =
          req->file_containing_extension;
      if (x == NULL || !name_ok(x->containing_type)) {
        *out_message = "containing type name missing or too long";
        return VK_GRPC_INVALID_ARGUMENT;
      }
      for (size_t i = 0; i < r->n_exts; i++) {
        if (r->exts[i].number == x->extension_number &&
            strcmp(r->exts[i].extendee, x->containing_type) == 0) {
          *out_file = &r->files[r->exts[i].file];
          return VK_GRPC_OK;
        }
      }
      *out_message = "extension not found";
      return VK_GRPC_NOT_FOUND;
    }

    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE: {
      const char *type = req->all_extension_numbers_of_type;
      if (!name_ok(type)) {
        *out_message = "type name too long";
        return VK_GRPC_INVALID_ARGUMENT;
      }
      sym = sym_find(r, type);
      if (sym == NULL || sym->kind != REFL_SYM_MESSAGE) {
        *out_message = "type not found";
        return VK_GRPC_NOT_FOUND;
      }
      // A known message with no extensions gets an empty list, as from
      // grpc C++ and grpc-go.
      size_t n = 0;
      for (size_t i = 0; i < r->n_exts; i++) {
        n += strcmp(r->exts[i].extendee, type) == 0;
      }
      if (n > 0) {
        *out_nums = calloc(n, sizeof(**out_nums));
        if (*out_nums == NULL) {
          *out_message = "out of memory";
          return VK_GRPC_RESOURCE_EXHAUSTED;
        }
        for (size_t i = 0, j = 0; i < r->n_exts; i++) {
          if (strcmp(r->exts[i].extendee, type) == 0) {
            (*out_nums)[j++] = r->exts[i].number;
          }
        }
      }
      numbers->base_type_name = sym->name;
      numbers->n_extension_number = n;
      numbers->extension_number = *out_nums;
      return VK_GRPC_OK;
    }

    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
      return VK_GRPC_OK;

    default:
      *out_message = "no known request in ServerReflectionRequest";
      return VK_GRPC_INVALID_ARGUMENT;
  }
}

// refl_answer sends the one response to `req`. Returns vk_call_send's code.
static int refl_answer(vk_call_t *call, const vk_reflection_t *r,
                       const refl_req_t *req) {
  refl_resp_t resp = GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__INIT;
  Grpc__Reflection__V1__ErrorResponse err =
      GRPC__REFLECTION__V1__ERROR_RESPONSE__INIT;
  Grpc__Reflection__V1__FileDescriptorResponse files =
      GRPC__REFLECTION__V1__FILE_DESCRIPTOR_RESPONSE__INIT;
  Grpc__Reflection__V1__ListServiceResponse list =
      GRPC__REFLECTION__V1__LIST_SERVICE_RESPONSE__INIT;
  Grpc__Reflection__V1__ExtensionNumberResponse numbers =
      GRPC__REFLECTION__V1__EXTENSION_NUMBER_RESPONSE__INIT;
  const refl_file_t *file;
  int32_t *nums;
  const char *message;

  // The request is only packed, never written.
  resp.original_request = (refl_req_t *)req;
  if (req->host != NULL) {
    resp.valid_host = req->host;
  }
  vk_grpc_status_t code = refl_lookup(r, req, &file, &numbers, &nums, &message);
  if (code != VK_GRPC_OK) {
    err.error_code = (int32_t)code;
    err.error_message = (char *)message;
    resp.message_response_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
    resp.error_response = &err;
  } else if (file != NULL) {
    files.n_file_descriptor_proto = file->n_closure;
    files.file_descriptor_proto = file->closure;
    resp.message_response_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
    resp.file_descriptor_response = &files;
  } else if (
      req->message_request_case ==
      GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES) {
    list.n_service = r->n_services;
    list.service = r->service_ptrs;
    resp.message_response_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
    resp.list_services_response = &list;
  } else {
    resp.message_response_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE;
    resp.all_extension_numbers_response = &numbers;
  }
  // vk_call_send serializes at once: nothing here needs to outlive it.
  int rv = vk_call_send(call, &resp.base);
  if (rv == VK_ETOOBIG) {
    err.error_code = VK_GRPC_RESOURCE_EXHAUSTED;
    err.error_message = (char *)"answer over the message size limit";
    resp.message_response_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
    resp.error_response = &err;
    rv = vk_call_send(call, &resp.base);
  }
  free(nums);
  return rv;
}

// --- streams
// -----------------------------------------------------------------------

// A request that could not be answered yet because the send queue was full,
// kept serialized (the decoded one lives only during on_message).
typedef struct refl_pending_s {
  struct refl_pending_s *next;
  size_t len;
  uint8_t data[];
} refl_pending_t;

// Per-stream state, in the call's arena. Requests are answered in order, so
// once one waits, the ones after it wait behind it.
typedef struct refl_stream_s {
  refl_pending_t *head;
  refl_pending_t **tail;
  size_t n_pending;
  size_t pending_bytes;  // sum of the requests' lengths
  bool half_closed;
} refl_stream_t;

static void stream_clear(refl_stream_t *st) {
  while (st->head != NULL) {
    refl_pending_t *p = st->head;
    st->head = p->next;
    free(p);
  }
  st->tail = &st->head;
  st->n_pending = 0;
  st->pending_bytes = 0;
}

// stream_fail ends the call after an error from vk_call_send other than
// VK_EAGAIN. VK_ECLOSED means it already ended.
static void stream_fail(vk_call_t *call, refl_stream_t *st, int rv) {
  stream_clear(st);
  if (rv != VK_ECLOSED) {
    vk_log(VK_LOG_WARN, vk_call_id(call), "reflection send: %s",
           vk_strerror(rv));
    vk_call_finish(call, VK_GRPC_INTERNAL, "cannot send reflection response");
  }
}

static void stream_enqueue(vk_call_t *call, refl_stream_t *st,
                           const refl_req_t *req) {
  size_t len =
      grpc__reflection__v1__server_reflection_request__get_packed_size(req);
  if (st->n_pending >= VK_REFLECTION_MAX_PENDING ||
      len > VK_REFLECTION_MAX_PENDING_BYTES - st->pending_bytes) {
    stream_clear(st);
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED,
                   "too many unanswered reflection requests");
    return;
  }
  refl_pending_t *p = malloc(sizeof(*p) + len);
  if (p == NULL) {
    stream_clear(st);
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  p->next = NULL;
  p->len = grpc__reflection__v1__server_reflection_request__pack(req, p->data);
  *st->tail = p;
  st->tail = &p->next;
  st->n_pending++;
  st->pending_bytes += p->len;
}

static void refl_start(vk_call_t *call, const ProtobufCMessage *msg) {
  (void)msg;  // bidi: requests come through on_message
  refl_stream_t *st = vk_call_alloc(call, sizeof(*st));
  if (st == NULL) {
    vk_call_finish(call, VK_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  st->tail = &st->head;
  vk_call_set_data(call, st);
}

static void refl_message(vk_call_t *call, const ProtobufCMessage *msg) {
  refl_stream_t *st = vk_call_data(call);
  if (st == NULL || vk_call_is_done(call)) {
    return;
  }
  if (st->head == NULL) {
    int rv =
        refl_answer(call, vk_call_service_ctx(call), (const refl_req_t *)msg);
    if (rv == 0) {
      return;
    }
    if (rv != VK_EAGAIN) {
      stream_fail(call, st, rv);
      return;
    }
  }
  stream_enqueue(call, st, (const refl_req_t *)msg);
}

static void refl_half_close(vk_call_t *call) {
  refl_stream_t *st = vk_call_data(call);
  if (st == NULL) {
    return;
  }
  st->half_closed = true;
  if (st->head == NULL) {
    vk_call_finish(call, VK_GRPC_OK, NULL);
  }
}

// refl_writable answers the waiting requests, in order, until the send
// queue fills again; then ends the stream if the client is done sending.
static void refl_writable(vk_call_t *call) {
  refl_stream_t *st = vk_call_data(call);
  if (st == NULL || vk_call_is_done(call)) {
    return;
  }
  const vk_reflection_t *r = vk_call_service_ctx(call);
  while (st->head != NULL) {
    refl_pending_t *p = st->head;
    refl_req_t *req = grpc__reflection__v1__server_reflection_request__unpack(
        NULL, p->len, p->data);
    if (req == NULL) {
      stream_fail(call, st, VK_ENOMEM);
      return;
    }
    int rv = refl_answer(call, r, req);
    grpc__reflection__v1__server_reflection_request__free_unpacked(req, NULL);
    if (rv == VK_EAGAIN) {
      return;
    }
    if (rv != 0) {
      stream_fail(call, st, rv);
      return;
    }
    st->head = p->next;
    if (st->head == NULL) {
      st->tail = &st->head;
    }
    st->n_pending--;
    st->pending_bytes -= p->len;
    free(p);
  }
  if (st->half_closed) {
    vk_call_finish(call, VK_GRPC_OK, NULL);
  }
}

static void refl_cancel(vk_call_t *call) {
  refl_stream_t *st = vk_call_data(call);
  if (st != NULL) {
    stream_clear(st);
  }
}

// Both versions use the v1 descriptors: see the top of this file.
#define REFL_METHOD                                                          \
  {                                                                          \
    .name = "ServerReflectionInfo", .kind = VK_RPC_BIDI,                     \
    .input = &grpc__reflection__v1__server_reflection_request__descriptor,   \
    .output = &grpc__reflection__v1__server_reflection_response__descriptor, \
    .on_start = refl_start, .on_message = refl_message,                      \
    .on_half_close = refl_half_close, .on_cancel = refl_cancel,              \
    .on_writable = refl_writable,                                            \
  }

static const vk_method_t refl_methods[] = {REFL_METHOD};

// --- public API
// ------------------------------------------------------------------

int vk_reflection_new(vk_reflection_t **out, const uint8_t *fds,
                      size_t fds_len) {
  *out = NULL;
  vk_reflection_t *r = calloc(1, sizeof(*r));
  if (r == NULL) {
    return VK_ENOMEM;
  }
  r->svc_v1 = (vk_service_t){"grpc.reflection.v1.ServerReflection",
                             refl_methods, VK_ARRAY_LEN(refl_methods), r};
  r->svc_v1alpha = (vk_service_t){"grpc.reflection.v1alpha.ServerReflection",
                                  refl_methods, VK_ARRAY_LEN(refl_methods), r};

  // vk_reflection_free copes with a half-built `r` (calloc'ed, every field
  // NULL or counted), so every failure below unwinds through it.
  int rv = VK_ENOMEM;
  r->fds = malloc(fds_len > 0 ? fds_len : 1);
  if (r->fds == NULL) {
    goto fail;
  }
  if (fds_len > 0) {
    memcpy(r->fds, fds, fds_len);
  }
  r->set = google__protobuf__file_descriptor_set__unpack(NULL, fds_len, r->fds);
  if (r->set == NULL) {
    VK_ERROR("reflection: the descriptor set does not parse");
    rv = VK_EINVAL;
    goto fail;
  }
  r->files = calloc(r->set->n_file + 1, sizeof(*r->files));
  if (r->files == NULL) {
    goto fail;
  }
  r->n_files = r->set->n_file;
  rv = fds_split(r, fds_len);
  if (rv == 0) {
    rv = index_files(r);
  }
  for (size_t f = 0; rv == 0 && f < r->n_files; f++) {
    rv = index_file(r, f);
  }
  if (rv != 0) {
    goto fail;
  }
  sym_sort(r);
  rv = VK_ENOMEM;
  r->service_ptrs = calloc(r->n_services + 1, sizeof(*r->service_ptrs));
  if (r->service_ptrs == NULL) {
    goto fail;
  }
  for (size_t i = 0; i < r->n_services; i++) {
    r->service_ptrs[i] = &r->service_msgs[i];
  }
  VK_DEBUG("reflection: %zu files, %zu symbols, %zu services", r->n_files,
           r->n_symbols, r->n_services);
  *out = r;
  return 0;

fail:
  vk_reflection_free(r);
  return rv;
}

void vk_reflection_free(vk_reflection_t *r) {
  if (r == NULL) {
    return;
  }
  for (size_t i = 0; i < r->n_services; i++) {
    free(r->service_msgs[i].name);
  }
  free(r->service_msgs);
  free(r->service_ptrs);
  for (size_t i = 0; i < r->n_exts; i++) {
    free(r->exts[i].extendee);
  }
  free(r->exts);
  for (size_t i = 0; i < r->n_symbols; i++) {
    free(r->symbols[i].name);
  }
  free(r->symbols);
  if (r->files != NULL) {
    for (size_t i = 0; i < r->n_files; i++) {
      free(r->files[i].closure);
    }
    free(r->files);
  }
  if (r->set != NULL) {
    google__protobuf__file_descriptor_set__free_unpacked(r->set, NULL);
  }
  free(r->fds);
  free(r);
}

const vk_service_t *vk_reflection_service_v1(vk_reflection_t *r) {
  return &r->svc_v1;
}

const vk_service_t *vk_reflection_service_v1alpha(vk_reflection_t *r) {
  return &r->svc_v1alpha;
}
