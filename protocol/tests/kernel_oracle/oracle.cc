// Golden values for protocol/tests/kernel.rs: an independent re-statement of the per-pixel loop of
// rsplib's fractalgeneratorservice.cc (same expressions, same types), compiled the way rsplib is
// built (g++ -std=c++11 -O2 for x86-64 without FMA). Regenerate with ./generate.sh.
#include <complex>
#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
   if(argc != 10) {
      fprintf(stderr, "usage: %s width height maxIterations algorithm c1r c1i c2r c2i n\n", argv[0]);
      return 1;
   }
   const unsigned int width = strtoul(argv[1], 0, 0), height = strtoul(argv[2], 0, 0);
   const unsigned int maxIterations = strtoul(argv[3], 0, 0), algorithm = strtoul(argv[4], 0, 0);
   const double c1real = strtod(argv[5], 0), c1imag = strtod(argv[6], 0);
   const double c2real = strtod(argv[7], 0), c2imag = strtod(argv[8], 0), n = strtod(argv[9], 0);
   const double stepX = (c2real - c1real) / width;
   const double stepY = (c2imag - c1imag) / height;

   printf("%u %u %u %u %.17g %.17g %.17g %.17g %.17g\n",
          width, height, maxIterations, algorithm, c1real, c1imag, c2real, c2imag, n);
   for(unsigned int y = 0; y < height; y++) {
      for(unsigned int x = 0; x < width; x++) {
         const std::complex<double> c(c1real + ((double)x * stepX), c1imag + ((double)y * stepY));
         std::complex<double> z(0.0, 0.0);
         size_t i = 0;
         if(algorithm == 1) {
            for(i = 0; i < maxIterations; i++) {
               z = z*z - c;
               if((z.real() * z.real() + z.imag() * z.imag()) >= 2.0) {
                  break;
               }
            }
         }
         else if(algorithm == 2) {
            for(i = 0; i < maxIterations; i++) {
               z = pow(z, std::complex<double>(n)) - c;
               if((z.real() * z.real() + z.imag() * z.imag()) >= 2.0) {
                  break;
               }
            }
         }
         else {
            i = (x * y) % 256;
         }
         printf("%u%c", (unsigned int)i, (x + 1 == width) ? '\n' : ' ');
      }
   }
   return 0;
}
