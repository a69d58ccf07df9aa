// CIFAR-10 from the official binary layout: data_batch_1.bin … data_batch_5.bin (train, 50,000 records)
// and test_batch.bin (10,000). A record is 1 label byte (0-9) then 3072 pixel bytes: 32 x 32 R, G, B planes.
// Train: random 32 x 32 crop of the image zero-padded by 4, random horizontal flip, normalization.
// Eval: normalization only.
#pragma once
#include <memory>
#include <string>

#include "datasets/dataset.h"

namespace data {

// Reads the train or test files of dir into memory. Checks every file: it exists, its size is a multiple
// of 3073, its labels are 0-9; throws std::runtime_error naming the file and the problem.
// limit > 0 keeps limit records spread evenly (spread_subset in dataset.h).
std::unique_ptr<Dataset> open_cifar10(const std::string& dir, bool train, size_t limit = 0);

// The folder of the CIFAR-10 batches. data_opt when given (that folder or its cifar-10-batches-bin/), else
// the first of data/cifar-10-batches-bin and ../shared/data/cifar-10-batches-bin that has the batches,
// else it runs scripts/get-cifar10.sh to download it into data/ (as torchvision's download=True), unless
// fetch is false or the environment sets REPQ_NO_DOWNLOAD=1. Throws, saying where it looked and how to get
// the data, when none is found.
std::string find_or_fetch_cifar10(const std::string& data_opt, bool fetch = true);

}  // namespace data
