// replay_main.c: a main() for a fuzz target built without libFuzzer (any
// compiler). It runs LLVMFuzzerTestOneInput over every file named on the
// command line, or in the directories named, plus the empty input, so ctest
// replays the committed corpora and past crashes under ASan/UBSan.
//
//   fuzz_frame tests/fuzz/corpus/fuzz_frame [more dirs or files]
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

// run_file feeds one file to the target; returns 0, or -1 if unreadable.
static int run_file(const char *path) {
  FILE *f = fopen(path, "rb");
  uint8_t *buf = NULL;
  size_t len = 0;
  size_t cap = 0;
  if (f == NULL) {
    perror(path);
    return -1;
  }
  for (;;) {
    size_t n;
    if (len == cap) {
      uint8_t *grown;
      cap = cap == 0 ? 4096 : cap * 2;
      grown = realloc(buf, cap);
      if (grown == NULL) {
        free(buf);
        fclose(f);
        return -1;
      }
      buf = grown;
    }
    n = fread(buf + len, 1, cap - len, f);
    len += n;
    if (n == 0) {
      break;
    }
  }
  if (ferror(f)) {
    perror(path);
    free(buf);
    fclose(f);
    return -1;
  }
  fclose(f);
  // An exact-size copy, so ASan catches a read one byte past the input.
  {
    uint8_t *exact = malloc(len == 0 ? 1 : len);
    if (exact == NULL) {
      free(buf);
      return -1;
    }
    if (len > 0) {
      memcpy(exact, buf, len);
    }
    free(buf);
    LLVMFuzzerTestOneInput(exact, len);
    free(exact);
  }
  return 0;
}

// run_path runs a file, or every regular file in a directory (not
// recursively). Returns the number of inputs run, or -1 on an error.
static long run_path(const char *path) {
  struct stat st;
  DIR *dir;
  struct dirent *e;
  long n = 0;
  if (stat(path, &st) != 0) {
    perror(path);
    return -1;
  }
  if (!S_ISDIR(st.st_mode)) {
    return run_file(path) == 0 ? 1 : -1;
  }
  dir = opendir(path);
  if (dir == NULL) {
    perror(path);
    return -1;
  }
  while ((e = readdir(dir)) != NULL) {
    char child[4096];
    int w;
    if (e->d_name[0] == '.') {
      continue;
    }
    w = snprintf(child, sizeof(child), "%s/%s", path, e->d_name);
    if (w < 0 || (size_t)w >= sizeof(child) || stat(child, &st) != 0) {
      closedir(dir);
      return -1;
    }
    if (!S_ISREG(st.st_mode)) {
      continue;
    }
    if (run_file(child) != 0) {
      closedir(dir);
      return -1;
    }
    n++;
  }
  closedir(dir);
  return n;
}

int main(int argc, char **argv) {
  long total = 0;
  int i;
  LLVMFuzzerTestOneInput((const uint8_t *)"", 0);
  for (i = 1; i < argc; i++) {
    long n = run_path(argv[i]);
    if (n < 0) {
      return 1;
    }
    total += n;
  }
  printf("%s: replayed %ld inputs\n", argv[0], total);
  // An empty corpus almost surely means a wrong path: fail loudly.
  return total > 0 ? 0 : 1;
}
