// A CUPTI activity tracer loaded by the CUDA driver (CUDA_INJECTION64_PATH=libkernel_trace.so): every kernel and
// memcpy of the process, with its device, stream, start/end and the latency timestamps (queued: the host's launch
// call; submitted: pushed to the GPU), written as CSV to $KERNEL_TRACE_OUT at exit. A diagnostic for the GPU
// benchmark (benchmarks/gpu/diag-w2.sh) where nsys is not installed. Build: see build.sh.
#include <cupti.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#define CHECK(call)                                                                   \
  do {                                                                                \
    CUptiResult r_ = (call);                                                          \
    if (r_ != CUPTI_SUCCESS) {                                                        \
      const char *msg_ = "?";                                                         \
      cuptiGetResultString(r_, &msg_);                                                \
      fprintf(stderr, "[kernel_trace] %s failed: %s\n", #call, msg_);                  \
    }                                                                                 \
  } while (0)

static FILE *out;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static const size_t BUF = 8 << 20;

static void CUPTIAPI requested(uint8_t **buffer, size_t *size, size_t *maxRecords) {
  *buffer = aligned_alloc(8, BUF);
  *size = BUF;
  *maxRecords = 0;
}

static void CUPTIAPI completed(CUcontext ctx, uint32_t stream, uint8_t *buffer, size_t size, size_t valid) {
  CUpti_Activity *rec = NULL;
  pthread_mutex_lock(&lock);
  while (out && cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
    if (rec->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || rec->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
      CUpti_ActivityKernel10 *k = (CUpti_ActivityKernel10 *)rec;
      char name[81];
      snprintf(name, sizeof name, "%s", k->name ? k->name : "?");
      for (char *c = name; *c; c++) {
        if (*c == ',') *c = ';';
      }
      fprintf(out, "K,%u,%u,%llu,%llu,%llu,%llu,%u,%s\n", k->deviceId, k->streamId,
              (unsigned long long)k->start, (unsigned long long)k->end, (unsigned long long)k->queued,
              (unsigned long long)k->submitted, k->correlationId, name);
    } else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      CUpti_ActivityMemcpy6 *m = (CUpti_ActivityMemcpy6 *)rec;
      fprintf(out, "M,%u,%u,%llu,%llu,0,0,%u,memcpy kind %u bytes %llu\n", m->deviceId, m->streamId,
              (unsigned long long)m->start, (unsigned long long)m->end, m->correlationId, m->copyKind,
              (unsigned long long)m->bytes);
    }
  }
  pthread_mutex_unlock(&lock);
  size_t dropped = 0;
  cuptiActivityGetNumDroppedRecords(ctx, stream, &dropped);
  if (dropped) fprintf(stderr, "[kernel_trace] dropped %zu records\n", dropped);
  free(buffer);
}

static void finish(void) {
  cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  pthread_mutex_lock(&lock);
  if (out) {
    fclose(out);
    out = NULL;
  }
  pthread_mutex_unlock(&lock);
}

int InitializeInjection(void) {
  const char *path = getenv("KERNEL_TRACE_OUT");
  out = fopen(path ? path : "kernel_trace.csv", "w");
  if (!out) {
    perror("[kernel_trace] open");
    return 0;
  }
  fprintf(out, "type,device,stream,start,end,queued,submitted,correlation,name\n");
  CHECK(cuptiActivityEnableLatencyTimestamps(1));
  CHECK(cuptiActivityRegisterCallbacks(requested, completed));
  CHECK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL));
  CHECK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY));
  atexit(finish);
  fprintf(stderr, "[kernel_trace] tracing kernels and copies to %s\n", path ? path : "kernel_trace.csv");
  return 1;
}
