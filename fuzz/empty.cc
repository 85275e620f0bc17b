// Stands in for learner/ sources in the fuzz build (see CMakeLists.txt).
