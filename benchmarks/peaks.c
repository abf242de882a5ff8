/* Register-resident per-core peak microbenchmark: fp32 FMA, int8 VNNI (vpdpbusd), AND+POPCNT,
 * and int8 AMX (tdpbusd on 4 independent 16x16 accumulator tiles) where the CPU and OS have it.
 * 12 independent accumulators per kind, inputs made opaque so nothing is hoisted out of the loop.
 * Built and run by benchmarks/peaks.py (gcc -O2 -march=native); prints "<kind> <G ops/s>" lines:
 * fp32, vnni and amx in G MAC/s, popcount in G binary-MAC/s (one bit of AND + popcount + add). */
#include <immintrin.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#if defined(__AMX_INT8__) && defined(__linux__)
#include <unistd.h>
#include <sys/syscall.h>
#endif
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#define N 20000000L
#define R12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
int main(){
  double t; long s;
#if defined(__AVX512VNNI__)
  { __m512i a=_mm512_set1_epi32(0x01020304), b=_mm512_set1_epi32(0x05060708);
  #define D(i) __m512i c##i=_mm512_set1_epi32(i);
  R12(D)
  t=now();
  for(long it=0;it<N;it++){
    #define U(i) c##i=_mm512_dpbusd_epi32(c##i,a,b);
    R12(U)
    __asm__ volatile("" :: "v"(c0),"v"(c1),"v"(c2),"v"(c3),"v"(c4),"v"(c5),"v"(c6),"v"(c7),"v"(c8),"v"(c9),"v"(c10),"v"(c11));
  }
  t=now()-t; s=0;
  #define S(i) s+=_mm512_reduce_add_epi32(c##i);
  R12(S)
  printf("vnni %.2f %ld\n", (double)N*12*64/t/1e9, s); }
#endif
  { __m512 x=_mm512_set1_ps(1.0f), y=_mm512_set1_ps(0.0f);
  #define DF(i) __m512 f##i=_mm512_set1_ps(i);
  R12(DF)
  t=now();
  for(long it=0;it<N;it++){
    #define UF(i) f##i=_mm512_fmadd_ps(f##i,x,y);
    R12(UF)
    __asm__ volatile("" :: "v"(f0),"v"(f1),"v"(f2),"v"(f3),"v"(f4),"v"(f5),"v"(f6),"v"(f7),"v"(f8),"v"(f9),"v"(f10),"v"(f11));
  }
  t=now()-t; float fs=0;
  #define SF(i) fs+=_mm512_reduce_add_ps(f##i);
  R12(SF)
  printf("fp32 %.2f %f\n", (double)N*12*16/t/1e9, fs); }
#if defined(__AVX512VPOPCNTDQ__)
  { __m512i w=_mm512_set1_epi64(0x0123456789abcdefL);
  #define DP(i) __m512i p##i=_mm512_set1_epi64(i); __m512i v##i=_mm512_set1_epi64(0x0101010101010101L*(i+1));
  R12(DP)
  t=now();
  for(long it=0;it<N;it++){
    __asm__ volatile("" : "+v"(w));
    #define UP(i) p##i=_mm512_add_epi64(p##i,_mm512_popcnt_epi64(_mm512_and_si512(v##i,w)));
    R12(UP)
    __asm__ volatile("" :: "v"(p0),"v"(p1),"v"(p2),"v"(p3),"v"(p4),"v"(p5),"v"(p6),"v"(p7),"v"(p8),"v"(p9),"v"(p10),"v"(p11));
  }
  t=now()-t; s=0;
  #define SP(i) s+=_mm512_reduce_add_epi64(p##i);
  R12(SP)
  printf("popcount %.2f %ld\n", (double)N*12*512/t/1e9, s); }
#endif
#if defined(__AMX_INT8__) && defined(__linux__)
  /* arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): Linux grants AMX state on request */
  if (syscall(158, 0x1023, 18) == 0) {
    struct { unsigned char palette, start, r[14]; unsigned short colsb[16]; unsigned char rows[16]; } cfg;
    static unsigned char A[16*64], B[16*64]; static int C[16*16];
    memset(&cfg, 0, sizeof cfg); cfg.palette = 1;
    for (int i = 0; i < 8; i++) { cfg.colsb[i] = 64; cfg.rows[i] = 16; }
    _tile_loadconfig(&cfg);
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    _tile_loadd(4, A, 64); _tile_loadd(5, A, 64); _tile_loadd(6, B, 64); _tile_loadd(7, B, 64);
    long n = N / 16;
    t = now();
    for (long it = 0; it < n; it++) {
      _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7); _tile_dpbusd(2, 5, 6); _tile_dpbusd(3, 5, 7);
    }
    t = now() - t;
    _tile_stored(0, C, 64); _tile_release();
    printf("amx %.2f %d\n", (double)n*4*16*16*64/t/1e9, C[0]); }
#endif
}
