/* Register-resident per-core peak microbenchmark: fp32 FMA, int8 VNNI (vpdpbusd), AND+POPCNT,
 * and int8 AMX (tdpbusd on 4 independent 16x16 accumulator tiles) where the CPU and OS have it.
 * 12 independent accumulators per kind, inputs made opaque so nothing is hoisted out of the loop.
 * Built and run by benchmarks/peaks.py (gcc -O2 -march=native); prints "<kind> <G ops/s>" lines:
 * fp32, vnni and amx in G MAC/s, popcount in G binary-MAC/s (one bit of AND + popcount + add).
 * On AVX2-only CPUs (e.g. Zen 3): fp32 on 256-bit FMA, "vpmaddwd" and "vpmaddubsw" (the AVX2 int8
 * kernels' int16 and byte lanes) in G MAC/s, and popcount as the vpshufb nibble lookup + vpsadbw
 * that LLVM emits for a vector ctpop without VPOPCNTDQ. */
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
#define R10(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9)
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
#if defined(__AVX512F__)
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
#elif defined(__AVX2__) && defined(__FMA__)
  { __m256 x=_mm256_set1_ps(1.0f), y=_mm256_set1_ps(0.0f);
  #define DG(i) __m256 g##i=_mm256_set1_ps(i);
  R12(DG)
  t=now();
  for(long it=0;it<N;it++){
    #define UG(i) g##i=_mm256_fmadd_ps(g##i,x,y);
    R12(UG)
    __asm__ volatile("" :: "x"(g0),"x"(g1),"x"(g2),"x"(g3),"x"(g4),"x"(g5),"x"(g6),"x"(g7),"x"(g8),"x"(g9),"x"(g10),"x"(g11));
  }
  t=now()-t; float fs=0; float lanes[8];
  #define SG(i) _mm256_storeu_ps(lanes,g##i); for(int k=0;k<8;k++) fs+=lanes[k];
  R12(SG)
  printf("fp32 %.2f %f\n", (double)N*12*8/t/1e9, fs); }
#endif
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
#if defined(__AVX2__) && !defined(__AVX512VNNI__)
  /* The AVX2 int8 kernels' two regimes, as their inner loops issue them (inline asm, so nothing
   * is hoisted): "vpmaddwd", int16 lanes (vpmaddwd + vpaddd: 16 MACs); "vpmaddubsw", byte lanes
   * (vpmaddubsw, vpmaddwd by ones, vpaddd: 32 MACs). 10 independent products per step, each into
   * its own accumulator, two temporaries in turn. */
  { __m256i a=_mm256_set1_epi32(0x00030004), b=_mm256_set1_epi32(0x00050006), ones=_mm256_set1_epi16(1);
    __m256i q0=_mm256_setzero_si256(),q1=q0,q2=q0,q3=q0,q4=q0,q5=q0,q6=q0,q7=q0,q8=q0,q9=q0;
  #define QOUT [q0]"+x"(q0),[q1]"+x"(q1),[q2]"+x"(q2),[q3]"+x"(q3),[q4]"+x"(q4),[q5]"+x"(q5),[q6]"+x"(q6),[q7]"+x"(q7),[q8]"+x"(q8),[q9]"+x"(q9)
  #define WD(acc, tmp) "vpmaddwd %[a],%[b]," tmp "\n\tvpaddd " tmp "," acc "," acc "\n\t"
  #define UBS(acc, tmp) "vpmaddubsw %[b],%[a]," tmp "\n\tvpmaddwd %[ones]," tmp "," tmp "\n\tvpaddd " tmp "," acc "," acc "\n\t"
  #define TEN(X) X("%[q0]","%%ymm14") X("%[q1]","%%ymm15") X("%[q2]","%%ymm14") X("%[q3]","%%ymm15") X("%[q4]","%%ymm14") \
                 X("%[q5]","%%ymm15") X("%[q6]","%%ymm14") X("%[q7]","%%ymm15") X("%[q8]","%%ymm14") X("%[q9]","%%ymm15")
  int ilanes[8];
  #define SV(v) _mm256_storeu_si256((__m256i*)ilanes,v); for(int k=0;k<8;k++) s+=ilanes[k];
  t=now();
  for(long it=0;it<N;it++) __asm__ volatile(TEN(WD) : QOUT : [a]"x"(a),[b]"x"(b) : "xmm14","xmm15");
  t=now()-t; s=0;
  SV(q0) SV(q1) SV(q2) SV(q3) SV(q4) SV(q5) SV(q6) SV(q7) SV(q8) SV(q9)
  printf("vpmaddwd %.2f %ld\n", (double)N*10*16/t/1e9, s);
  t=now();
  for(long it=0;it<N;it++) __asm__ volatile(TEN(UBS) : QOUT : [a]"x"(a),[b]"x"(b),[ones]"x"(ones) : "xmm14","xmm15");
  t=now()-t; s=0;
  SV(q0) SV(q1) SV(q2) SV(q3) SV(q4) SV(q5) SV(q6) SV(q7) SV(q8) SV(q9)
  printf("vpmaddubsw %.2f %ld\n", (double)N*10*32/t/1e9, s); }
#endif
#if defined(__AVX2__) && !defined(__AVX512VPOPCNTDQ__)
  /* No vector popcount: LLVM lowers ctpop of 4 x i64 to a nibble lookup (vpshufb) and a byte sum
   * (vpsadbw). The same sequence here, with the AND and the 64-bit accumulate of the bit-serial loop. */
  { __m256i w=_mm256_set1_epi64x(0x0123456789abcdefL), lut=_mm256_setr_epi8(0,1,1,2,1,2,2,3,1,2,2,3,2,3,3,4,0,1,1,2,1,2,2,3,1,2,2,3,2,3,3,4);
    __m256i lo=_mm256_set1_epi8(0x0f), zero=_mm256_setzero_si256();
  #define DQ(i) __m256i q##i=_mm256_set1_epi64x(i); __m256i r##i=_mm256_set1_epi64x(0x0101010101010101L*(i+1));
  R12(DQ)
  t=now();
  for(long it=0;it<N;it++){
    __asm__ volatile("" : "+x"(w));
    #define UQ(i) { __m256i v=_mm256_and_si256(r##i,w); \
      __m256i c=_mm256_add_epi8(_mm256_shuffle_epi8(lut,_mm256_and_si256(v,lo)),_mm256_shuffle_epi8(lut,_mm256_and_si256(_mm256_srli_epi16(v,4),lo))); \
      q##i=_mm256_add_epi64(q##i,_mm256_sad_epu8(c,zero)); }
    R12(UQ)
    __asm__ volatile("" :: "x"(q0),"x"(q1),"x"(q2),"x"(q3),"x"(q4),"x"(q5),"x"(q6),"x"(q7),"x"(q8),"x"(q9),"x"(q10),"x"(q11));
  }
  t=now()-t; s=0; long long qlanes[4];
  #define SQ(i) _mm256_storeu_si256((__m256i*)qlanes,q##i); for(int k=0;k<4;k++) s+=qlanes[k];
  R12(SQ)
  printf("popcount %.2f %ld\n", (double)N*12*256/t/1e9, s); }
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
